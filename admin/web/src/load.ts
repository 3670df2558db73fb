// Loading a page's data: a busy flag and the API's error in Chinese, one way for every page.
import { ref, type Ref } from "vue";
import { ElMessage, ElMessageBox } from "element-plus";
import { api, explain } from "./api";

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
  // a slow answer to an earlier question (another day, another filter) must not overwrite
  // the answer to the latest one
  let asked = 0;
  async function latest<T>(work: () => Promise<T>, apply: (value: T) => void): Promise<void> {
    const mine = ++asked;
    const value = await run(work);
    if (value !== undefined && mine === asked) apply(value);
  }
  return { busy, run, latest };
}

/** Do what the user asked: their success message, or the API's refusal in Chinese; true when
 * it was done. */
export async function act(work: () => Promise<unknown>, done?: string): Promise<boolean> {
  try {
    await work();
    if (done) ElMessage.success(done);
    return true;
  } catch (e) {
    ElMessage.error(explain(e));
    return false;
  }
}

/** Ask the user for a line of text (a reason, a time): trimmed, or null when they cancel.
 * Without ``check`` the answer only has to be there. */
export async function ask(message: string, title: string,
                          check: (v: string) => boolean | string = (v) => !!v?.trim() || "请填写说明",
                          ): Promise<string | null> {
  try {
    return (await ElMessageBox.prompt(message, title, { inputValidator: check })).value.trim();
  } catch {
    return null; // cancelled
  }
}

/** A table paged on the server: ``params()`` goes into the list's query (offset, limit),
 * ``total`` comes from its answer; ``first()`` — after a new filter — starts again from the
 * first page. Shown by Pager.vue. */
export interface Pages {
  size: number; current: Ref<number>; total: Ref<number>;
  params(): { offset: number; limit: number }; first(): void; reload(): unknown;
}

export function pager(reload: () => unknown, size = 20): Pages {
  const current = ref(1);
  const total = ref(0);
  const params = () => ({ offset: (current.value - 1) * size, limit: size });
  const first = () => { current.value = 1; void reload(); };
  return { size, current, total, params, first, reload };
}

/** How far a long request has got (the server's /api/v1/admin/progress/{id}). */
export interface Progress { done: number; total: number; phase: string }

/** A bar's percentage: going through the rows is most of the work (up to 90 %), writing the
 * result the last part (95 % while it is written). */
export function percentOf(p: Progress | null | undefined): number {
  if (!p || !p.total) return 0;
  return p.phase === "writing" ? 95 : Math.min(90, Math.round((90 * p.done) / p.total));
}

/** Run a long request named with a fresh progress id (``work(id)`` puts it in the request's
 * query as ``progress``), reading its progress into ``shown`` while it runs — from the
 * server's progress board, or with ``read`` from the record the work keeps itself (a
 * settlement batch); ``shown`` is null again when it has answered. */
export async function tracked<T>(work: (id: string) => Promise<T>, shown: Ref<Progress | null>,
                                 read?: () => Promise<Progress>): Promise<T> {
  const id = `w${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}`;
  let running = true;
  shown.value = { done: 0, total: 0, phase: "sending" };
  const poll = async () => {
    while (running) {
      await new Promise((r) => window.setTimeout(r, 300));
      if (!running) break;
      try {
        const now = read ? await read() : await api<Progress>("GET", `/api/v1/admin/progress/${id}`);
        if (running) shown.value = now;
      } catch {
        // not begun yet (the file still uploading): keep asking
      }
    }
  };
  void poll();
  try {
    return await work(id);
  } finally {
    running = false;
    shown.value = null;
  }
}
