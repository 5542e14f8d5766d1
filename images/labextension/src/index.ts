// @gpu-workspaces/lab: the server's GPUs and the time it has left, in the status bar,
// a panel with the rules behind it, and one warning before the hub stops the server.
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { MainAreaWidget, Notification } from '@jupyterlab/apputils';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';

import { call, IStatus, StatusError } from './api';
import { duration, idleWarning, minutes, sessionWarning, statusText } from './format';
import { createPanel, StatusContent } from './panel';

const DEFAULT_POLL_SECONDS = 15;

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

class Monitor {
  constructor(private readonly app: JupyterFrontEnd) {
    this.item.id = 'gpuws-status';
    this.item.addClass('gpuws-status');
    this.item.node.textContent = 'GPU …';
    this.item.node.title = 'GPU session: click for details';
    this.item.node.addEventListener('click', () => this.openPanel());
  }

  readonly item = new Widget();

  /** Poll forever, at the hub's pace (poll_seconds), and keep going after errors. */
  async run(): Promise<void> {
    let seconds = DEFAULT_POLL_SECONDS;
    try {
      this.show(await call('status'), null);
      seconds = this.status?.hub?.poll_seconds || DEFAULT_POLL_SECONDS;
    } catch (error) {
      this.show(null, message(error));
    }
    window.setTimeout(() => void this.run(), Math.max(5, seconds) * 1000);
  }

  private show(status: IStatus | null, error: string | null): void {
    if (status) {
      this.status = status;
      this.item.node.textContent = statusText(status);
      this.warn(status);
      this.warnBudget(status);
    } else {
      this.item.node.title = `GPU session: ${error}`;
    }
    this.panel?.content.render(this.status, error);
  }

  private openPanel(): void {
    if (!this.panel || this.panel.isDisposed) {
      this.panel = createPanel();
      this.panel.content.render(this.status, null);
    }
    if (!this.panel.isAttached) {
      this.app.shell.add(this.panel, 'main');
    }
    this.app.shell.activateById(this.panel.id);
  }

  /** One notification per episode: a new one only after the time left went above the window. */
  private warn(status: IStatus): void {
    const hub = status.hub;
    const left = hub?.stop_in_seconds;
    if (!hub || left === null || left === undefined || left > hub.warn_before_seconds) {
      if (this.warning !== null) {
        Notification.dismiss(this.warning);
        this.warning = null;
      }
      this.warned = false;
      return;
    }
    if (this.warned) {
      return;
    }
    this.warned = true;
    if (hub.stop_reason === 'budget') {
      // the hub's own sentence: whose budget, how much is left, what happens then
      this.warning = Notification.warning(hub.budget?.message ?? 'GPU-hours budget used up.', {
        autoClose: false
      });
    } else if (hub.stop_reason === 'session') {
      const actions = hub.session.can_extend
        ? [
            {
              label: `Extend by ${duration(hub.session.extend_seconds)}`,
              callback: () => void this.act('extend')
            }
          ]
        : [];
      this.warning = Notification.warning(sessionWarning(status), {
        autoClose: false,
        actions
      });
    } else {
      this.warning = Notification.warning(idleWarning(status), {
        autoClose: false,
        actions: [{ label: 'Keep running', callback: () => void this.act('keep') }]
      });
    }
  }

  /** A budget that runs out while the server is kept running (on_budget_exhausted "keep"):
   * one notice per episode, as for the stop warning. */
  private warnBudget(status: IStatus): void {
    const hub = status.hub;
    const budget = hub ? hub.budget : null;
    const left = budget ? budget.exhausts_in_seconds : null;
    if (
      !hub ||
      !budget ||
      hub.stop_reason === 'budget' ||
      left === null ||
      left === undefined ||
      left > hub.warn_before_seconds
    ) {
      this.budgetWarned = false;
      return;
    }
    if (!this.budgetWarned) {
      this.budgetWarned = true;
      Notification.warning(budget.message ?? 'GPU-hours budget used up.', { autoClose: false });
    }
  }

  private async act(action: 'keep' | 'extend'): Promise<void> {
    if (this.warning !== null) {
      Notification.dismiss(this.warning);
      this.warning = null;
    }
    try {
      const status = await call(action);
      const left = status.hub?.stop_in_seconds;
      const until = left === null || left === undefined ? 'no stop scheduled' : `stops in ${minutes(left)} min`;
      Notification.success(
        action === 'keep' ? `Kept running: ${until}.` : `Extended: ${until}.`,
        { autoClose: 5000 }
      );
      this.show(status, null);
    } catch (error) {
      const text = error instanceof StatusError ? error.message : message(error);
      Notification.error(text, { autoClose: false });
    }
  }

  private status: IStatus | null = null;
  private panel: MainAreaWidget<StatusContent> | null = null;
  private warning: string | null = null;
  private warned = false;
  private budgetWarned = false;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: '@gpu-workspaces/lab:plugin',
  description: 'GPU allocation, idle rule and session limit of a gpu-workspaces server.',
  autoStart: true,
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, statusBar: IStatusBar | null) => {
    const monitor = new Monitor(app);
    if (statusBar) {
      statusBar.registerStatusItem('@gpu-workspaces/lab:status', {
        item: monitor.item,
        align: 'left',
        rank: 100
      });
    }
    void monitor.run();
  }
};

export default plugin;
