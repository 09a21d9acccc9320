"""The lessons in a real browser: JupyterLab in headless Chromium, driven by Playwright.

nbval proves that every notebook runs and prints what it printed when it was committed, but
it has no front end: no widget is ever drawn and no widget callback ever fires. This test
does what a student does. For each lesson (``notebooks/*.ipynb``) it

1. opens the notebook in a JupyterLab server started for the test session on 127.0.0.1;
2. waits until the notebook's kernel is really usable (see "the kernel" below), then runs
   all cells and waits until every cell has run and the kernel is idle;
3. checks that no error appeared anywhere: no traceback, no stderr stream (warnings too),
   neither in the cells nor in any message of the kernel (which is where an exception in a
   widget callback ends up), and no widget that failed to display;
4. operates one widget (generic strategy below) and checks that some widget's view changed;
5. saves a screenshot as ``test-artifacts/browser/<lesson>.png`` (also when it fails).

The server's root is a temporary copy of ``notebooks/`` (and ``examples/``), so nothing
committed is modified (JupyterLab saves notebooks). Its configuration, runtime, data,
settings, workspace and IPython directories are temporary too, so a developer's own Jupyter
set-up (extensions, kernels, settings, startup files) cannot change the result.

The kernel. The toolbar's kernel indicator says "idle" before the browser's websocket to
the kernel is connected, and "Run All" clicked then does nothing (a flaky test). So the
server runs with ``--expose-app-in-browser`` and the test awaits, in the page,
``sessionContext.ready`` and then ``kernel.info`` (the kernel_info reply, which comes over
that websocket) before it executes the command ``notebook:run-all-cells``.

Operating a widget. Lessons use different widgets, so the test tries, in order: the first
slider (focus its handle, ArrowRight, else ArrowLeft), dropdowns (choose another option),
buttons that are not the selected one of a toggle group (click), and as a last resort a
text box; it stops at the first action after which the text or an image of some
``.widget-output`` / ``.widget-html`` differs from before.

Chromium. Debian's ``/usr/bin/chromium`` (``KAISER_CHROMIUM`` overrides the path); never
``playwright install``, which downloads a browser build (the network here only reaches
package registries). Without it the tests are skipped with a message, unless CI=true, when
a missing browser fails them: CI must really run them (.ci/run installs the package).

Run them with ``make browser`` (``pytest -m browser tests/test_browser.py``);
``KAISER_BROWSER_NOTEBOOKS=<dir>`` points the test at another folder of notebooks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from process_helpers import stop

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
LESSONS_DIR = Path(os.environ.get("KAISER_BROWSER_NOTEBOOKS", REPO / "notebooks"))
LESSONS = sorted(LESSONS_DIR.glob("*.ipynb")) if LESSONS_DIR.is_dir() else []
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = Path(os.environ.get("KAISER_CHROMIUM", "/usr/bin/chromium"))
IN_CI = os.environ.get("CI", "").lower() == "true"

# Flags that keep Chromium from stalling on a network that reaches only package registries
# (background fetches, component updates, sync, QUIC) and from needing a GPU, a sandbox
# (root in a container) or a large /dev/shm.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]

# Bounded waits (seconds). Running all cells includes the kernel's first numba compile
# (~10 s with an empty cache) and the figures' simulations.
SERVER_START_TIMEOUT = 90
OPEN_TIMEOUT = 90  # page loaded, notebook panel there, kernel started and connected
RUN_ALL_TIMEOUT = 420
WIDGET_CHANGE_TIMEOUT = 20  # per attempted widget action
MAX_WIDGET_ATTEMPTS = 8
SETTLE_SECONDS = 1.5  # widget views unchanged this long count as settled

ERROR_MIME = "application/vnd.jupyter.stderr"  # JupyterLab shows errors and stderr as this
WIDGET_VIEWS = ".jp-NotebookPanel .widget-output, .jp-NotebookPanel .widget-html"


def _need_chromium() -> None:
    """Skip (or fail, with CI=true) unless the browser and Playwright are there."""
    try:
        import playwright.sync_api  # noqa: F401
        have_playwright = True
    except ImportError:
        have_playwright = False
    problems = []
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        problems.append(f"{CHROMIUM} is missing: install Debian's chromium: "
                        "apt-get install chromium (never `playwright install`)")
    if not have_playwright:
        problems.append("the playwright Python package is missing: make venv "
                        "(pip install -e '.[test]')")
    if problems:
        message = "real-browser test not run: " + "; ".join(problems)
        if IN_CI:
            pytest.fail(message + " (CI=true: the browser test must run in CI)", pytrace=False)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


class Lab:
    """A running JupyterLab server: its URL, token, root folder and log."""

    def __init__(self, base: str, token: str, root: Path, log: Path):
        self.base, self.token, self.root, self.log = base, token, root, log

    def url(self, rel_path: str) -> str:
        return f"{self.base}/lab/tree/{rel_path}?reset&token={self.token}"

    def api(self, method: str, path: str):
        request = urllib.request.Request(f"{self.base}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> None:
        """End every session and its kernel (a closed page leaves them running)."""
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join(lines[-n:])


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory):
    """JupyterLab on 127.0.0.1 with a token, isolated from the user's Jupyter set-up."""
    _need_chromium()
    base_dir = tmp_path_factory.mktemp("jupyterlab")
    root = base_dir / "root"
    root.mkdir()
    ignore = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__")
    shutil.copytree(LESSONS_DIR, root / "notebooks", ignore=ignore)
    if (REPO / "examples").is_dir():  # lessons may read worked inputs from ../examples
        shutil.copytree(REPO / "examples", root / "examples", ignore=ignore)

    dirs = {name: base_dir / name for name in ("config", "runtime", "data", "settings",
                                               "workspaces", "ipython")}
    for d in dirs.values():
        d.mkdir()
    # No news pop-up, no update check; every cell in the DOM (windowingMode "none": with
    # virtual scrolling, cells off screen are not rendered and could not be checked); no
    # autosave (nothing to save: the test only runs the copy).
    _write_json(dirs["settings"] / "@jupyterlab/apputils-extension/notification.jupyterlab-settings",
                {"fetchNews": "false", "checkForUpdates": False})
    _write_json(dirs["settings"] / "@jupyterlab/notebook-extension/tracker.jupyterlab-settings",
                {"windowingMode": "none"})
    _write_json(dirs["settings"] / "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings",
                {"autosave": False})

    env = dict(os.environ)
    for var in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_PREFER_ENV_PATH"):
        env.pop(var, None)
    env.update(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),  # no user-level kernelspec shadows python3
        JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
        IPYTHONDIR=str(dirs["ipython"]),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        # The kernels share the run's numba cache (set by make / .ci/run), else their own.
        NUMBA_CACHE_DIR=env.get("NUMBA_CACHE_DIR", str(base_dir / "numba-cache")),
        PYTHONUNBUFFERED="1",
    )
    port, token = _free_port(), uuid.uuid4().hex
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "jupyter-server.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", "--ServerApp.port_retries=0", "--allow-root",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--expose-app-in-browser"]
    with log.open("w", encoding="utf-8") as log_file:
        server = subprocess.Popen(cmd, env=env, cwd=root, stdout=log_file,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    app = Lab(base, token, root, log)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}:\n{app.log_tail()}",
                            pytrace=False)
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer /api/status within "
                            f"{SERVER_START_TIMEOUT} s:\n{app.log_tail()}", pytrace=False)
            time.sleep(0.25)
        yield app
    finally:
        stop(server)


@pytest.fixture(scope="session")
def browser(lab: Lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                     headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)  # a laptop: see "what a student reads"
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()


# --- in the page --------------------------------------------------------------------------

# Find the notebook's panel once the app is up (window.jupyterapp: --expose-app-in-browser).
_FIND_PANEL = """(path) => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return false;
  const panel = Array.from(app.shell.widgets('main'))
    .find(w => w.context && w.context.path === path && w.sessionContext);
  if (!panel) return false;
  window.__kaiserPanel = panel;
  return true;
}"""

# The FLAKY TRAP: wait for the session, then for kernel_info over the kernel's websocket,
# then record every kernel error / stderr message, then start Run All.
_START_RUN_ALL = """async () => {
  const app = window.jupyterapp, panel = window.__kaiserPanel;
  app.shell.activateById(panel.id);
  await panel.context.ready;
  await panel.sessionContext.ready;
  const session = panel.sessionContext.session;
  if (!session || !session.kernel) throw new Error('the notebook has no kernel session');
  const info = await session.kernel.info;
  window.__kaiserErrors = [];
  panel.sessionContext.iopubMessage.connect((_, msg) => {
    const type = msg.header.msg_type, c = msg.content;
    const parent = (msg.parent_header && msg.parent_header.msg_type) || '';
    if (type === 'error') {
      window.__kaiserErrors.push({parent, text: `${c.ename}: ${c.evalue}\\n` +
                                  (c.traceback || []).join('\\n')});
    } else if (type === 'stream' && c.name === 'stderr') {
      window.__kaiserErrors.push({parent, text: 'stderr: ' + c.text});
    }
  });
  // Clear the committed outputs and execution counts first: afterwards, a cell with an
  // execution count is one that this Run All executed.
  await app.commands.execute('notebook:clear-all-cell-outputs');
  window.__kaiserRun = {done: false, ok: null, error: null};
  app.commands.execute('notebook:run-all-cells').then(
    ok => { window.__kaiserRun.done = true; window.__kaiserRun.ok = ok; },
    e => { window.__kaiserRun.done = true; window.__kaiserRun.error = String(e); });
  return {kernel: session.kernel.name, language: info.language_info.name};
}"""

_RUN_FINISHED = """() => {
  const run = window.__kaiserRun, panel = window.__kaiserPanel;
  if (!run || !run.done) return false;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle';
}"""

# What ran: the code cells with source, which of them have an execution count, and the
# error outputs the cells hold.
_CELL_REPORT = """() => {
  const panel = window.__kaiserPanel;
  const out = {code: 0, executed: 0, errors: [], run: window.__kaiserRun,
               kernelMessages: window.__kaiserErrors};
  let n = 0;
  for (const cell of panel.content.model.cells) {
    n += 1;
    if (cell.type !== 'code' || !cell.sharedModel.getSource().trim()) continue;
    out.code += 1;
    if (cell.executionCount !== null) out.executed += 1;
    for (let i = 0; i < cell.outputs.length; i++) {
      const o = cell.outputs.get(i).toJSON();
      if (o.output_type === 'error')
        out.errors.push({cell: n, text: `${o.ename}: ${o.evalue}\\n` +
                         (o.traceback || []).join('\\n')});
      else if (o.output_type === 'stream' && o.name === 'stderr')
        out.errors.push({cell: n, text: 'stderr: ' + o.text});
    }
  }
  return out;
}"""

# The text (and images) of every widget view, to tell whether operating a widget changed it.
_SNAPSHOT = """(selector) => Array.from(document.querySelectorAll(selector)).map(e =>
  e.innerText + ' | ' + Array.from(e.querySelectorAll('img'))
    .map(i => i.src.length + ':' + i.src.slice(-80)).join(','))"""

_CHANGED = """([selector, before]) => {
  const now = Array.from(document.querySelectorAll(selector)).map(e =>
    e.innerText + ' | ' + Array.from(e.querySelectorAll('img'))
      .map(i => i.src.length + ':' + i.src.slice(-80)).join(','));
  return JSON.stringify(now) !== JSON.stringify(before);
}"""


# The widget manager in the page asks the kernel, as soon as it connects, for the state of
# all widgets through a "jupyter.widget.control" comm. Until the notebook has imported
# ipywidgets the kernel has no such comm target and logs so on stderr, then once or twice
# that the page's messages to that one comm go nowhere. That is the widget protocol's normal
# start, shown only in JupyterLab's log console: exactly that pattern is ignored (a "No such
# comm" for any second comm is reported).
_NO_CONTROL_TARGET = re.compile(r"stderr: No such comm target registered: "
                                r"jupyter\.widget\.control\s*")
_NO_SUCH_COMM = re.compile(r"stderr: No such comm: ([0-9a-f-]{32,36})\s*")


def _kernel_errors(messages: list[dict]) -> list[str]:
    """The kernel's error and stderr messages, less the widget protocol's start-up noise."""
    texts = [m["text"] for m in messages]
    unknown = [t for t in texts if not _NO_CONTROL_TARGET.fullmatch(t)]
    comms = {m.group(1) for t in unknown if (m := _NO_SUCH_COMM.fullmatch(t))}
    if len(unknown) < len(texts) and len(comms) == 1:  # the control comm
        unknown = [t for t in unknown if not _NO_SUCH_COMM.fullmatch(t)]
    return unknown


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _short(text: str, limit: int = 1500) -> str:
    text = _ANSI.sub("", text).strip()
    return text if len(text) <= limit else text[:limit] + " [...]"


def _problems(report: dict, page) -> list[str]:
    """Every error seen, once: error and stderr outputs of the cells, the kernel's error and
    stderr messages that are not already one of those (a widget callback's exception), and,
    in the page, widgets that failed to display and error outputs not accounted for above
    (inside an Output widget)."""
    found = [f"cell {e['cell']}: {_short(e['text'])}" for e in report["errors"]]
    in_cells = {_short(e["text"]) for e in report["errors"]}
    found += [f"kernel: {_short(t)}" for t in _kernel_errors(report["kernelMessages"])
              if _short(t) not in in_cells]
    broken = page.get_by_text("Error displaying widget")
    found += [f"page: {_short(broken.nth(i).inner_text(), 300)}" for i in range(broken.count())]
    shown = page.locator(f'.jp-OutputArea-output[data-mime-type="{ERROR_MIME}"]')
    if not found and shown.count():
        found += [f"page: {_short(shown.nth(i).inner_text())}" for i in range(shown.count())]
    return found


def _wait_settled(page, timeout: float = 20) -> None:
    """Until the widget views stop changing (late renders, progress bars), at most timeout."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = page.evaluate(_SNAPSHOT, WIDGET_VIEWS)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= SETTLE_SECONDS:
            return
        time.sleep(0.25)


def _changed(page, before, timeout: float) -> bool:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(_CHANGED, arg=[WIDGET_VIEWS, before], timeout=timeout * 1000,
                               polling=250)
        return True
    except PlaywrightTimeout:
        return False


def _candidates(page):
    """(description, locator, action) for the widgets to try, in the order tried."""
    out = []
    scope = ".jp-NotebookPanel .jp-OutputArea"
    handles = page.locator(f"{scope} .widget-slider .noUi-handle")
    for i in range(handles.count()):
        out.append(("slider", handles.nth(i), "slider"))
    selects = page.locator(f"{scope} .widget-dropdown select:not([disabled])")
    for i in range(selects.count()):
        out.append(("dropdown", selects.nth(i), "select"))
    buttons = page.locator(f"{scope} button.jupyter-button:not(.mod-active):not([disabled])")
    for i in range(buttons.count()):
        out.append(("button", buttons.nth(i), "click"))
    texts = page.locator(f"{scope} .widget-text input:not([disabled])")
    for i in range(texts.count()):
        out.append(("text box", texts.nth(i), "text"))
    return out


def _operate(page, locator, action: str, before) -> bool:
    """Do one action on one widget; True if some widget view changed afterwards."""
    locator.scroll_into_view_if_needed()
    if action == "slider":
        locator.focus()
        page.keyboard.press("ArrowRight")
        if _changed(page, before, WIDGET_CHANGE_TIMEOUT / 2):
            return True
        locator.focus()  # at its maximum: go the other way
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        return _changed(page, before, WIDGET_CHANGE_TIMEOUT / 2)
    if action == "select":
        options = locator.locator("option")
        if options.count() < 2:
            return False
        current = locator.input_value()
        values = [options.nth(i).get_attribute("value") for i in range(options.count())]
        choice = next(v for v in values if v != current)
        locator.select_option(choice)
    elif action == "click":
        locator.click()
    elif action == "text":
        value = locator.input_value()
        locator.fill(value[:-1] if len(value) > 1 else value + "1")
        locator.press("Enter")
    return _changed(page, before, WIDGET_CHANGE_TIMEOUT)


@pytest.mark.timeout(RUN_ALL_TIMEOUT + OPEN_TIMEOUT + 300)
@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_in_jupyterlab(lab: Lab, page, lesson: Path) -> None:
    rel = f"notebooks/{lesson.name}"
    shot = ARTIFACTS / f"{lesson.stem}.png"
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        page.goto(lab.url(rel), wait_until="domcontentloaded", timeout=OPEN_TIMEOUT * 1000)
        page.wait_for_function(_FIND_PANEL, arg=rel, timeout=OPEN_TIMEOUT * 1000, polling=250)
        started = page.evaluate(_START_RUN_ALL)
        assert started["language"] == "python", started
        timings["open"] = time.monotonic() - t0

        page.wait_for_function(_RUN_FINISHED, timeout=RUN_ALL_TIMEOUT * 1000, polling=250)
        timings["run all"] = time.monotonic() - t0 - timings["open"]
        report = page.evaluate(_CELL_REPORT)
        assert report["run"]["error"] is None, f"Run All failed: {report['run']['error']}"
        _wait_settled(page)

        errors = _problems(report, page)
        assert not errors, f"{rel}: error output after Run All:\n" + "\n".join(errors)
        assert report["executed"] == report["code"], (
            f"{rel}: only {report['executed']} of {report['code']} code cells ran")

        if not page.locator(".jp-NotebookPanel .jp-OutputArea .jupyter-widgets").count():
            pytest.fail(f"{rel}: no widget was displayed after Run All", pytrace=False)

        readability, measured = _readability(page, lesson)  # before any widget is operated
        assert not readability, f"{rel} at {VIEWPORT['width']} px:\n" + "\n".join(readability)
        timings.update(measured)

        def callback_errors() -> list[str]:
            """Errors since Run All (the cells were checked above): a callback's exception."""
            return _problems(dict(page.evaluate(_CELL_REPORT), errors=[]), page)

        before = page.evaluate(_SNAPSHOT, WIDGET_VIEWS)
        tried: list[str] = []
        for what, locator, action in _candidates(page)[:MAX_WIDGET_ATTEMPTS]:
            tried.append(what)
            changed = _operate(page, locator, action, before)
            errors = callback_errors()
            assert not errors, f"{rel}: error output after operating a {what}:\n" + \
                "\n".join(errors)
            if changed:
                break
        else:
            pytest.fail(f"{rel}: no widget view changed after operating "
                        f"{', '.join(tried) or 'nothing (no slider, dropdown, button or text box)'}",
                        pytrace=False)
        _wait_settled(page)
        timings["widget"] = time.monotonic() - t0 - timings["open"] - timings["run all"]
        errors = callback_errors()
        assert not errors, f"{rel}: error output after operating a {tried[-1]}:\n" + \
            "\n".join(errors)
        after, _ = _readability(page, lesson)  # the widget's new view, e.g. a stepper's table
        assert not after, (f"{rel} at {VIEWPORT['width']} px, after operating a {tried[-1]}:\n"
                           + "\n".join(after))
        print(f"\n{lesson.stem}: {report['code']} code cells; operated a {tried[-1]}; "
              + ", ".join(f"{k} {v:.1f} s" if isinstance(v, float) and k in
                          ("open", "run all", "widget") else f"{k} {v}"
                          for k, v in timings.items()))
    finally:
        try:
            page.screenshot(path=str(shot))
        except Exception as exc:  # the page may be gone; the failure above says why
            print(f"no screenshot for {lesson.stem}: {exc}")
        try:
            lab.shut_down_kernels()
        except (urllib.error.URLError, OSError) as exc:  # do not hide the test's own error
            print(f"could not shut down the kernels after {lesson.stem}: {exc}")


# --- what a student reads at laptop width (issue 13) ----------------------------------------
# The lessons are read at 1366 px, where wide outputs wrap. After Run All (before any widget is
# operated), _READABILITY measures in the page:
#
# - tables: every <td>/<th> in an output area (cell outputs and widget views alike); for each
#   whitespace-separated token of its text, the line boxes the browser laid it out in
#   (Range.getClientRects()). A token on two lines is a value broken inside ("CR2=|0x800000",
#   "not-prese|nt"): a failure.
# - figures: every <img> in an output area must have alt text (a screen reader's only way
#   in), and must carry what kaiser_edu.display.figures measured when it drew it: its smallest
#   font in points at natural size (data-min-font-pt, data-dpi) and how many labels stick
#   out of the canvas (data-cut-labels). The test computes the size the student sees,
#   min-font-pt x dpi / 96 x (shown width / natural width), in CSS points, and fails under 9.
#   An image without those attributes is a figure drawn some other way: a failure, because
#   nothing would check it.
# - quizzes: no code cell's visible source contains the lesson's answer key (each right
#   option's text or feedback, from kaiser_edu.widgets.quizzes.lessonNN, or an Option(...)
#   constructor); and no option of a group of radio buttons (a quiz question) overlaps the
#   next one or covers a radio button (document.elementFromPoint at each radio's centre
#   must be that radio or its own label).
#
# - printed text: JupyterLab wraps a long line of stream output at any character, so the same
#   token check runs over every stdout <pre>: a token on two lines is a failure (show such
#   output as a table, or print it shorter).
VIEWPORT = {"width": 1366, "height": 800}
MIN_SHOWN_PT = 9.0

_READABILITY = """() => {
  const panel = window.__kaiserPanel.node;
  const out = {brokenTokens: [], figures: [], images: [], quizOverlaps: [], hiddenRadios: [],
               code: [], longStreamLines: 0, tables: 0, cells: 0, brokenStream: []};
  const lines = (range) => {
    const tops = new Set();
    for (const r of range.getClientRects()) if (r.width > 0.5) tops.add(Math.round(r.top));
    return tops.size;
  };
  // Call found(token, text node, offset) for every whitespace-separated token under root
  // that the browser laid out on more than one line.
  const brokenTokens = (root, found) => {
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    let node;
    while ((node = walker.nextNode())) {
      const re = /\\S+/g;
      let m;
      while ((m = re.exec(node.data))) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        if (lines(range) > 1) found(m[0], node, m.index);
      }
    }
  };
  const cells = panel.querySelectorAll('.jp-OutputArea-output td, .jp-OutputArea-output th');
  out.tables = panel.querySelectorAll('.jp-OutputArea-output table').length;
  out.cells = cells.length;
  for (const cell of cells) {
    if (!cell.offsetParent) continue;  // not displayed
    brokenTokens(cell, (token) =>
      out.brokenTokens.push({token, cell: cell.innerText.slice(0, 120)}));
  }
  const stdout = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"] pre';
  for (const pre of panel.querySelectorAll(stdout)) {
    brokenTokens(pre, (token, node, at) => {
      out.longStreamLines += 1;
      const start = node.data.lastIndexOf('\\n', at) + 1;
      out.brokenStream.push({token, line: node.data.slice(start, start + 120)});
    });
  }
  for (const img of panel.querySelectorAll('.jp-OutputArea-output img')) {
    if (!img.offsetParent || !img.naturalWidth) continue;
    out.images.push({alt: img.getAttribute('alt') || '',
                     minFontPt: img.dataset.minFontPt ? parseFloat(img.dataset.minFontPt) : null,
                     dpi: img.dataset.dpi ? parseFloat(img.dataset.dpi) : null,
                     cut: img.dataset.cutLabels ? parseInt(img.dataset.cutLabels) : null,
                     shown: img.getBoundingClientRect().width, natural: img.naturalWidth});
  }
  {  // every group of radio buttons (the quizzes), whatever made it
    const quiz = panel;
    for (const box of quiz.querySelectorAll('.jp-OutputArea-output .widget-radio-box')) {
      const labels = Array.from(box.querySelectorAll('label'));
      for (let i = 0; i + 1 < labels.length; i++) {
        const a = labels[i].getBoundingClientRect(), b = labels[i + 1].getBoundingClientRect();
        if (a.bottom > b.top + 1) out.quizOverlaps.push(labels[i].innerText.slice(0, 80));
      }
    }
    for (const radio of quiz.querySelectorAll('.jp-OutputArea-output .widget-radio-box input[type=radio]')) {
      radio.scrollIntoView({block: 'center'});
      const r = radio.getBoundingClientRect();
      const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      if (hit !== radio && !(hit && hit.contains && hit.contains(radio)) &&
          !(hit && hit.tagName === 'LABEL' && hit.contains(radio)))
        out.hiddenRadios.push(radio.parentElement.innerText.slice(0, 80));
    }
  }
  for (const cell of panel.querySelectorAll('.jp-CodeCell')) {
    if (cell.classList.contains('jp-mod-collapsed')) continue;
    const input = cell.querySelector('.jp-InputArea .cm-content');
    const hidden = cell.querySelector('.jp-InputArea') && !cell.querySelector('.jp-InputArea').offsetParent;
    if (input && !hidden) out.code.push(input.innerText);
  }
  return out;
}"""


def _answer_key(lesson: Path) -> list[str]:
    """The right options' texts (long enough to be unambiguous) and feedback of a lesson."""
    import importlib

    try:
        module = importlib.import_module(f"kaiser_edu.widgets.quizzes.lesson{lesson.name[:2]}")
    except ModuleNotFoundError:
        return []
    key = []
    for question in module.QUESTIONS:
        right = next(o for o in question.options if o.correct)
        key += [t for t in (right.text if len(right.text) >= 12 else "", right.feedback) if t]
    return key


def _readability(page, lesson: Path) -> tuple[list[str], dict]:
    """(problems, measurements) of what the lesson shows after Run All (see above)."""
    seen = page.evaluate(_READABILITY)
    problems = [f"table cell broken inside {b['token']!r}: {b['cell']!r}"
                for b in seen["brokenTokens"][:10]]
    problems += [f"printed line broken inside {b['token']!r}: {b['line']!r}"
                 for b in seen["brokenStream"][:10]]
    sizes = []
    for img in seen["images"]:
        if not img["alt"].strip():
            problems.append(f"figure ({img['natural']} px) without alt text")
        if img["minFontPt"] is None or img["dpi"] is None:
            problems.append(f"figure {img['alt'][:60]!r}: no measured text size "
                            "(not drawn through kaiser_edu.display.figures)")
            continue
        shown_pt = img["minFontPt"] * img["dpi"] / 96 * img["shown"] / img["natural"]
        sizes.append(shown_pt)
        if shown_pt < MIN_SHOWN_PT - 0.05:
            problems.append(f"figure {img['alt'][:60]!r}: smallest text {shown_pt:.1f} pt as "
                            f"shown ({img['shown']:.0f} of {img['natural']} px), under "
                            f"{MIN_SHOWN_PT} pt")
        if img["cut"]:
            problems.append(f"figure {img['alt'][:60]!r}: {img['cut']} labels cut off")
    problems += [f"quiz option overlaps the next one: {t!r}" for t in seen["quizOverlaps"]]
    problems += [f"quiz radio button covered: {t!r}" for t in seen["hiddenRadios"]]
    code = " ".join(" ".join(seen["code"]).split())
    if "Option(" in code:
        problems.append("a visible code cell constructs quiz Options (the answer key)")
    problems += [f"visible code shows a quiz answer: {k[:70]!r}" for k in _answer_key(lesson)
                 if " ".join(k.split()) in code]
    stats = {"tables": seen["tables"], "table cells": seen["cells"],
             "figures": len(seen["images"]),
             "smallest figure text (pt as shown)": round(min(sizes), 1) if sizes else None,
             "printed tokens broken": seen["longStreamLines"]}
    return problems, stats
