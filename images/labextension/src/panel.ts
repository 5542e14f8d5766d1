// The main-area panel: the allocation, the rules that stop the server, the queue.
import { MainAreaWidget } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import type { IStatus } from './api';
import { duration, shortName, statusText } from './format';

function when(iso: string | null): string {
  return iso ? new Date(iso).toLocaleString() : '—';
}

/** Rows of [label, value]; built with textContent only, so hub text cannot inject HTML. */
function rows(status: IStatus): [string, string][] {
  const hub = status.hub;
  const out: [string, string][] = [['Status bar', statusText(status)]];
  if (!hub) {
    out.push(['Hub', status.hub_error ?? 'No answer from the hub.']);
  } else {
    const gpus = hub.gpus.length
      ? hub.gpus
          .map(g => `GPU ${g.index} (id ${g.id}): ${shortName(g.name)}, ${Math.round(g.memory_mib / 1024)} GiB`)
          .join('; ')
      : 'none (CPU server)';
    const session = hub.session;
    out.push(
      ['Server', `${hub.user}${hub.server ? '/' + hub.server : ''}`],
      ['Profile', hub.profile ? `${hub.profile.display_name} (${hub.profile.slug})` : '—'],
      ['GPUs', gpus],
      ['Since', when(hub.since)],
      ['Idle rule', hub.idle.applies ? hub.idle.rule : 'Does not apply to this server.'],
      ['Idle deadline', when(hub.idle.deadline)],
      [
        'Session limit',
        session.max_age_seconds === null
          ? 'None.'
          : `${duration(session.max_age_seconds)}, until ${when(session.deadline)}; ` +
            `extensions used ${session.extensions_used} of ${session.max_extensions} ` +
            `(${duration(session.extend_seconds)} each)`
      ],
      [
        'Stops at',
        hub.stop_at ? `${when(hub.stop_at)} (${hub.stop_reason ?? 'unknown'})` : 'Not scheduled.'
      ],
      ['GPU-hours budget', hub.budget?.message ?? 'None.'],
      ['Waiting for GPUs', `${hub.queue.waiting} spawn(s) on this hub`]
    );
  }
  if (status.nvml) {
    for (const g of status.nvml) {
      out.push([
        `NVML GPU ${g.index}`,
        `${g.name} ${g.uuid}: ${g.utilization ?? '?'} %, ` +
          `${g.memory_used_mib ?? '?'} / ${g.memory_total_mib ?? '?'} MiB`
      ]);
    }
  } else {
    out.push(['NVML', status.nvml_error ?? 'Unavailable.']);
  }
  out.push(['NVIDIA_VISIBLE_DEVICES', status.visible_devices ?? '(not set)']);
  return out;
}

/** The panel's content; render() replaces it on every poll. */
export class StatusContent extends Widget {
  constructor() {
    super();
    this.addClass('gpuws-panel-content');
  }

  render(status: IStatus | null, error: string | null): void {
    const table = document.createElement('table');
    const data: [string, string][] = status ? rows(status) : [['Error', error ?? 'Loading…']];
    for (const [label, value] of data) {
      const tr = table.insertRow();
      const th = document.createElement('th');
      th.textContent = label;
      tr.appendChild(th);
      tr.insertCell().textContent = value;
    }
    this.node.replaceChildren(table);
  }
}

export function createPanel(): MainAreaWidget<StatusContent> {
  const panel = new MainAreaWidget({ content: new StatusContent() });
  panel.id = 'gpuws-panel';
  panel.title.label = 'GPU session';
  panel.title.closable = true;
  return panel;
}
