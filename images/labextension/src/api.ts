// The documents of /tmp/c/contract.md: what gpuws/status answers, and the calls to it.
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface IHubGpu {
  id: string;
  index: number;
  name: string;
  memory_mib: number;
}

export interface IHubDoc {
  user: string;
  server: string;
  profile: { slug: string; display_name: string } | null;
  gpus: IHubGpu[];
  since: string | null;
  now: string;
  idle: {
    applies: boolean;
    timeout_seconds: number | null;
    last_activity: string | null;
    deadline: string | null;
    rule: string;
  };
  session: {
    max_age_seconds: number | null;
    deadline: string | null;
    extensions_used: number;
    max_extensions: number;
    extend_seconds: number;
    can_extend: boolean;
  };
  stop_at: string | null;
  stop_reason: 'idle' | 'session' | 'budget' | null;
  stop_in_seconds: number | null;
  warn_before_seconds: number;
  poll_seconds: number;
  queue: { waiting: number };
  budget: {
    applies: boolean;
    exhausts_at: string | null;
    exhausts_in_seconds: number | null;
    on_exhausted: 'stop' | 'keep';
    message: string | null;
  };
}

export interface INvmlGpu {
  index: number;
  uuid: string;
  name: string;
  utilization: number | null;
  memory_used_mib: number | null;
  memory_total_mib: number | null;
}

export interface IStatus {
  hub: IHubDoc | null;
  hub_error: string | null;
  nvml: INvmlGpu[] | null;
  nvml_error: string | null;
  visible_devices: string | null;
}

/** A call that failed, with the server's one-sentence message. */
export class StatusError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

/** GET gpuws/status, or POST gpuws/keep / gpuws/extend (all answer a status). */
export async function call(
  endpoint: 'status' | 'keep' | 'extend'
): Promise<IStatus> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'gpuws', endpoint);
  const init: RequestInit = endpoint === 'status' ? {} : { method: 'POST' };
  const response = await ServerConnection.makeRequest(url, init, settings);
  let body: unknown = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message =
      body && typeof (body as { message?: unknown }).message === 'string'
        ? (body as { message: string }).message
        : `The server answered HTTP ${response.status}.`;
    throw new StatusError(message, response.status);
  }
  return body as IStatus;
}
