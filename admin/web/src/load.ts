// Loading a page's data: a busy flag and the API's error in Chinese, one way for every page.
import { ref } from "vue";
import { ElMessage } from "element-plus";
import { explain } from "./api";

export function loader() {
  const busy = ref(false);
  async function run<T>(work: () => Promise<T>): Promise<T | undefined> {
    busy.value = true;
    try {
      return await work();
    } catch (e) {
      ElMessage.error(explain(e));
      return undefined;
    } finally {
      busy.value = false;
    }
  }
  return { busy, run };
}
