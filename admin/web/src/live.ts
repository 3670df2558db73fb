// The Keyun WebSocket (/ws) for a page: topics subscribed, frames handed to the page,
// subscribed again after a drop or a resync (the server then sends a fresh snapshot).
import { ref, type Ref } from "vue";
import { state } from "./api";

export interface Frame { type: string; topic?: string; seq?: number; event?: string;
                         data?: any; topics?: string[] }

export class Live {
  readonly connected: Ref<boolean> = ref(false);
  private socket: WebSocket | null = null;
  private topics = new Set<string>();
  private closing = false;

  constructor(private readonly onFrame: (frame: Frame) => void) {}

  /** Watch exactly these topics (at most 50 on one connection: the server's limit). */
  watch(topics: string[]): void {
    const wanted = new Set(topics.slice(0, 50));
    for (const t of this.topics) if (!wanted.has(t)) this.send({ op: "unsubscribe", topic: t });
    for (const t of wanted) if (!this.topics.has(t)) this.send({ op: "subscribe", topic: t });
    this.topics = wanted;
    if (!this.socket) this.open();
  }

  close(): void {
    this.closing = true;
    this.socket?.close();
  }

  private open(): void {
    const token = state.session?.token;
    if (!token || this.closing) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(
      `${scheme}://${location.host}/ws?access_token=${encodeURIComponent(token)}`);
    this.socket = socket;
    socket.onopen = () => {
      this.connected.value = true;
      for (const t of this.topics) this.send({ op: "subscribe", topic: t });
    };
    socket.onmessage = (message) => {
      const frame = JSON.parse(String(message.data)) as Frame;
      if (frame.type === "resync") {
        for (const t of frame.topics ?? []) this.send({ op: "subscribe", topic: t });
      }
      this.onFrame(frame);
    };
    socket.onclose = () => {
      this.connected.value = false;
      this.socket = null;
      if (!this.closing) window.setTimeout(() => this.open(), 3000);
    };
  }

  private send(frame: Record<string, unknown>): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(frame));
  }
}
