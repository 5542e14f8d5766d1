// Texts of the status-bar item and of the warnings (the contract's wording).
import type { IStatus } from './api';

/** "NVIDIA A100 80GB" -> "A100 80GB": the vendor is the same on every GPU here. */
export function shortName(name: string): string {
  return name.replace(/^NVIDIA\s+/i, '');
}

/** Whole minutes left, rounded up, so "0 min" means it is stopping now. */
export function minutes(seconds: number): number {
  return Math.max(0, Math.ceil(seconds / 60));
}

function gib(mib: number | null): string {
  return mib === null ? '?' : String(Math.round(mib / 1024));
}

/** "1 h" for 3600 s, "90 min" for 5400 s. */
export function duration(seconds: number): string {
  return seconds % 3600 === 0 ? `${seconds / 3600} h` : `${minutes(seconds)} min`;
}

/** Device ids the container runtime gave this container ("" when none). */
export function visibleDevices(value: string | null): string[] {
  if (!value || ['none', 'void', ''].includes(value.trim().toLowerCase())) {
    return [];
  }
  return value
    .split(',')
    .map(part => part.trim())
    .filter(part => part.length > 0);
}

/** The status-bar line: one part per GPU, then the time left; "No GPU" otherwise. */
export function statusText(status: IStatus): string {
  const hub = status.hub;
  let parts: string[] = [];
  if (hub && hub.gpus.length === 0) {
    return 'No GPU'; // the hub allocated none: a CPU server
  }
  if (status.nvml && status.nvml.length > 0) {
    parts = status.nvml.map(gpu => {
      const util = gpu.utilization === null ? '?' : String(gpu.utilization);
      return (
        `GPU ${gpu.index} · ${shortName(gpu.name)} · ${util} % · ` +
        `${gib(gpu.memory_used_mib)}/${gib(gpu.memory_total_mib)} GiB`
      );
    });
  } else if (hub) {
    parts = hub.gpus.map(gpu => `GPU ${gpu.index} · ${shortName(gpu.name)}`);
  } else if (!hub) {
    // No hub answer: the runtime's device list is all there is to go on.
    parts = visibleDevices(status.visible_devices).map(id => `GPU ${id}`);
  }
  if (parts.length === 0) {
    return 'No GPU';
  }
  let text = parts.join(' · ');
  if (hub && hub.gpus.length > 0 && hub.stop_in_seconds !== null) {
    text += ` · ${minutes(hub.stop_in_seconds)} min left`;
  }
  return text;
}

/** The idle warning, e.g. "... stop in 9 min: no activity for 21 min (limit 30 min)." */
export function idleWarning(status: IStatus): string {
  const hub = status.hub!;
  const left = minutes(hub.stop_in_seconds ?? 0);
  const limit = hub.idle.timeout_seconds ?? 0;
  let idleFor = limit - (hub.stop_in_seconds ?? 0);
  if (hub.idle.last_activity) {
    idleFor = (Date.parse(hub.now) - Date.parse(hub.idle.last_activity)) / 1000;
  }
  return (
    `This server and its GPU stop in ${left} min: no activity for ` +
    `${Math.max(0, Math.floor(idleFor / 60))} min (limit ${Math.round(limit / 60)} min).`
  );
}

/** The session-limit warning. */
export function sessionWarning(status: IStatus): string {
  return `Session limit: this server stops in ${minutes(status.hub!.stop_in_seconds ?? 0)} min.`;
}
