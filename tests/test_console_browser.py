"""Both consoles in a real headless browser (Debian's chromium, driven by Playwright) against two real nodes.

One pair of nodes (mutual TLS, separate processes, the platform in manual-approval mode) serves the whole
file. An operator opens the bank's console with their own certificate, submits an alignment and two
trainings, which the platform's operator approves in the platform's console; watches one progress and finish,
opens its report, compares the two, sets an alias, creates a segment and reads its A/B result, scores, and
checks the node's health; the platform's operator finds the approvals in the audit. A revoked operator
certificate, no certificate, and a visit without the console's token each get a refusal and no data. Every
page is screenshotted at 1366x768 and 1920x1080 (``FEDPROFILE_SCREENSHOTS``, default tests/screenshots/)
and must log no JavaScript error. Chromium comes from `make test` (the `browser` target: apt's chromium).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from simulations.cluster import LocalCluster
from tests.nodes_fixture import simulated_files

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency: make install")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("FEDPROFILE_SCREENSHOTS", Path(__file__).resolve().parent / "screenshots"))
LAPTOP, LARGE = {"width": 1366, "height": 768}, {"width": 1920, "height": 1080}
WAIT_MS = 90_000


def start_console(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    """Start `bank-node console` / `platform-node console` on a free port; return it and the link it prints."""
    proc = subprocess.Popen([sys.executable, "-m", *args, "--port", "0"], cwd=cwd, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        found = re.search(r"open (http://127\.0\.0\.1:\d+/\?token=\S+)", line)
        if found:
            return proc, found.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("the console did not print its link:\n" + "".join(lines))


@dataclass
class Setup:
    cluster: LocalCluster
    bank_url: str
    platform_url: str
    bank_ids: list[str]
    shared_ids: list[str]
    tags: list[str]
    consoles: list[subprocess.Popen[str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    shots: list[Path] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("console")
    files = simulated_files(work / "data")
    cluster = LocalCluster(work / "cluster", bank_data=files.bank, bank_id_column="id", bank_tag_columns=files.tags,
                           platform_data=files.platform, platform_id_column="id", workers=1)
    with cluster.platform_config.open("a") as f:  # every job waits for the platform operator's approval
        f.write('\n[policy]\napproval = "manual"\nmax_released_projections = 6\n')
    cluster.start()
    consoles = []
    try:
        bank, bank_url = start_console(["party_bank.cli", "console", "--config", str(cluster.bank_config),
                                        *cluster.operator_args], cluster.workdir)
        consoles.append(bank)
        platform, platform_url = start_console(["party_platform.cli", "console", "--config",
                                                str(cluster.platform_config)], cluster.workdir)
        consoles.append(platform)
        with files.bank.open() as f:
            ids = [row["id"] for row in csv.DictReader(f)]
        yield Setup(cluster, bank_url, platform_url, ids, sorted(files.shared_ids), files.tags, consoles)
    finally:
        for proc in consoles:
            proc.terminate()
            proc.wait(timeout=10)
        cluster.stop()


@pytest.fixture(scope="module")
def browser(setup: Setup) -> Iterator[playwright_api.Browser]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {SHOTS}")
    with playwright_api.sync_playwright() as p:
        if not Path(CHROMIUM).exists():
            pytest.fail("no chromium: `make test` installs it (apt-get install chromium), or `make browser`")
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


REFUSED_STATUS = re.compile(r"^Failed to load resource: the server responded with a status of 40[13]")


def new_page(browser: playwright_api.Browser, setup: Setup, viewport: dict[str, int], *,
             refusals: bool = False) -> playwright_api.Page:
    """A tab whose JavaScript errors are collected; ``refusals``: the refusal pages' own 401/403 status (which
    chromium logs as an error) is expected there."""
    page = browser.new_page(viewport=viewport)  # type: ignore[arg-type]
    page.set_default_timeout(20_000)

    def on_console(message: playwright_api.ConsoleMessage) -> None:
        if message.type == "error" and not (refusals and REFUSED_STATUS.match(message.text)):
            setup.errors.append(f"{page.url}: {message.text}")
    page.on("console", on_console)
    page.on("pageerror", lambda e: setup.errors.append(f"{page.url}: {e}"))
    return page


def shoot(page: playwright_api.Page, setup: Setup, name: str) -> None:
    """A screenshot of the whole page, its figures loaded (lazy images are scrolled into view first)."""
    for img in page.locator("img").all():
        img.scroll_into_view_if_needed()
        page.wait_for_function("(el) => el.complete && el.naturalWidth > 0", arg=img.element_handle())
    width = page.viewport_size["width"] if page.viewport_size else 0
    path = SHOTS / f"{name}-{width}.png"
    page.screenshot(path=path, full_page=True)
    setup.shots.append(path)


def base(url: str) -> str:
    return url.split("/?")[0]


def approve_in_platform_console(page: playwright_api.Page, setup: Setup, job_id: str) -> None:
    page.goto(base(setup.platform_url) + "/queue")
    row = page.locator(f'tr[data-job="{job_id}"]')
    row.wait_for(timeout=WAIT_MS)  # the queue refreshes itself: the bank's job arrives when it first asks
    row.get_by_role("button", name="Approve").click()
    playwright_api.expect(page.locator(".flash")).to_contain_text(f"job {job_id} approved")


def submit(page: playwright_api.Page, setup: Setup, **fields: str) -> str:
    page.goto(base(setup.bank_url) + "/jobs")
    form = page.locator("#submit-form")
    form.locator("select[name=kind]").select_option(fields.pop("kind", "train"))
    for name, value in fields.items():
        form.locator(f"[name={name}]").fill(value)
    form.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r"/jobs/(align|train)-"))
    return page.url.rsplit("/", 1)[1]


def wait_succeeded(page: playwright_api.Page, job_id: str) -> None:
    playwright_api.expect(page.locator("#job-status")).to_have_text("succeeded", timeout=WAIT_MS)


def test_a_visit_without_the_token_or_certificate_sees_a_refusal_and_no_data(
        setup: Setup, browser: playwright_api.Browser) -> None:
    page = new_page(browser, setup, LAPTOP, refusals=True)
    # no token: the console answers nothing but how to open it
    page.goto(base(setup.bank_url) + "/jobs")
    playwright_api.expect(page.locator("h1")).to_have_text("Open the console's link")
    assert page.locator("table").count() == 0
    workdir, certs = setup.cluster.workdir, setup.cluster.workdir / "certs" / "bank"
    # a revoked operator certificate: the bank node's gate refuses it; the console says so and shows nothing
    subprocess.run([sys.executable, "-m", "party_common.certs", "operator", "mallory", "--dir", str(certs)],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "party_common.certs", "revoke", "--dir", str(certs), "--operator",
                    "mallory"], check=True, capture_output=True)
    config = str(setup.cluster.bank_config)
    revoked, url = start_console(["party_bank.cli", "console", "--config", config, "--cert",
                                  str(certs / "operators" / "mallory.crt")], workdir)
    try:
        page.goto(url)
        playwright_api.expect(page.locator("h1")).to_have_text("Refused by the bank node")
        playwright_api.expect(page.locator("#problem")).to_contain_text("revoked")
        assert page.locator("table").count() == 0
        shoot(page, setup, "refused-revoked")
    finally:
        revoked.terminate()
        revoked.wait(timeout=10)
    # no operator certificate at all
    nobody, url = start_console(["party_bank.cli", "console", "--config", config, "--cert",
                                 str(certs / "operators" / "nobody.crt")], workdir)
    try:
        page.goto(url)
        playwright_api.expect(page.locator("h1")).to_have_text("No operator certificate")
        playwright_api.expect(page.locator("#problem")).to_contain_text("nobody.crt")
        assert page.locator("table").count() == 0
    finally:
        nobody.terminate()
        nobody.wait(timeout=10)
    page.close()


def test_an_operator_aligns_trains_and_watches_progress_with_the_platform_approving(
        setup: Setup, browser: playwright_api.Browser) -> None:
    bank, platform = new_page(browser, setup, LAPTOP), new_page(browser, setup, LAPTOP)
    bank.goto(setup.bank_url)  # logs in: the link's token becomes the session's cookie
    playwright_api.expect(bank.locator(".who")).to_contain_text("certificate 'data-scientist' (operator, bank)")
    platform.goto(setup.platform_url)

    align = submit(bank, setup, kind="align", name="first-alignment")
    playwright_api.expect(bank.locator("#job-status")).to_have_text("awaiting approval", timeout=WAIT_MS)
    platform.goto(base(setup.platform_url) + "/queue")
    platform.locator(f'tr[data-job="{align}"]').wait_for(timeout=WAIT_MS)
    shoot(platform, setup, "platform-queue")
    approve_in_platform_console(platform, setup, align)
    wait_succeeded(bank, align)

    # serve "joint": on this little data the joint model need not beat the bank's own, and scoring should reach
    # the platform (its disclosure budget page then has a row)
    # a validation share of 0.2: the platform evaluates no split under 20 rows ([policy] min_evaluation_rows)
    first = submit(bank, setup, name="first", epochs="2", params='{"serve": "joint", "validation_share": 0.2}')
    approve_in_platform_console(platform, setup, first)
    # live: the page refreshes itself through the job's stages to the end, the epoch curve filling in
    playwright_api.expect(bank.locator("#job-status")).to_have_text(re.compile("queued|running|succeeded"),
                                                                    timeout=WAIT_MS)
    if bank.locator("#job-status").inner_text() == "running":
        shoot(bank, setup, "bank-job-running")
    wait_succeeded(bank, first)
    assert bank.locator("svg.chart polyline").count() == len(setup.tags)  # validation AUC per epoch, per tag
    shoot(bank, setup, "bank-job")
    setup.jobs.update(align=align, first=first)

    second = submit(bank, setup, name="second", epochs="3",
                    params='{"serve": "joint", "learning_rate": 0.2, "validation_share": 0.2}')
    approve_in_platform_console(platform, setup, second)
    wait_succeeded(bank, second)
    setup.jobs["second"] = second

    bank.goto(base(setup.bank_url) + "/jobs")
    for job in (align, first, second):
        playwright_api.expect(bank.locator(f'tr[data-job="{job}"] .status')).to_have_text("succeeded")
    bank.locator("#jobs th", has_text="duration").click()  # sortable
    shoot(bank, setup, "bank-jobs")
    bank.close()
    platform.close()


def test_an_operator_reads_a_report_and_compares_two_trainings(setup: Setup, browser: playwright_api.Browser) -> None:
    first, second = setup.jobs["first"], setup.jobs["second"]
    page = new_page(browser, setup, LAPTOP)
    page.goto(setup.bank_url)
    page.goto(base(setup.bank_url) + f"/jobs/{first}")
    page.locator("#open-report").click()
    playwright_api.expect(page.locator("h1")).to_contain_text(f"Training report {first}")
    for tag in setup.tags:
        playwright_api.expect(page.locator(f'#results td[data-tag="{tag}"][data-key="auc-joint"]')).to_have_text(
            re.compile(r"^(0|1)\.\d{3}$"))
    playwright_api.expect(page.locator("#parameters")).to_contain_text("learning_rate")
    playwright_api.expect(page.locator("#data")).to_contain_text(setup.jobs["align"])
    playwright_api.expect(page.locator("#served")).to_contain_text("joint")
    playwright_api.expect(page.locator("#inputs")).to_contain_text("Dropped columns")  # what went in, per tag too
    for tag in setup.tags:
        playwright_api.expect(page.locator(f'#labels td[data-tag="{tag}"][data-key="labelled"]')).to_have_text(
            re.compile(r"^[\d,]+ of [\d,]+$"))
    shoot(page, setup, "bank-report")  # waits for every tag's figures (ROC, lift/gains, calibration, epochs)

    page.goto(base(setup.bank_url) + "/jobs")
    page.locator(f'input[name=job][value="{first}"]').check()
    page.locator(f'input[name=job][value="{second}"]').check()
    page.locator("#compare-form").get_by_role("button", name="Compare").click()
    playwright_api.expect(page.locator("h1")).to_have_text("Compare trainings")
    differ = page.locator("#differ")
    playwright_api.expect(differ).to_contain_text("epochs")
    playwright_api.expect(differ).to_contain_text("learning_rate")
    assert page.locator("#comparison tbody tr").count() == len(setup.tags)
    shoot(page, setup, "bank-compare")
    page.close()


def test_an_operator_sets_an_alias_creates_a_segment_reads_its_result_and_scores(
        setup: Setup, browser: playwright_api.Browser, tmp_path: Path) -> None:
    first = setup.jobs["first"]
    page = new_page(browser, setup, LAPTOP)
    page.goto(setup.bank_url)
    page.goto(base(setup.bank_url) + "/models")
    form = page.locator("#alias-form")
    form.locator("[name=alias]").fill("cars@prod")
    form.locator("select[name=model]").select_option(first)
    form.get_by_role("button", name="Set alias").click()
    playwright_api.expect(page.locator(".flash")).to_have_text(f"alias cars@prod -> {first}")
    playwright_api.expect(page.locator(f'tr[data-model="{first}"]')).to_contain_text("cars@prod")
    shoot(page, setup, "bank-models")

    page.goto(base(setup.bank_url) + "/segments")
    form = page.locator("#segment-form")
    form.locator("[name=name]").fill("spring-cars")
    form.locator("select[name=model]").select_option(first)
    form.locator("select[name=tag]").select_option(setup.tags[0])
    form.locator("[name=value]").fill("50%")
    form.locator("[name=control]").fill("20%")
    form.locator("[name=seed]").fill("7")
    form.get_by_role("button", name="Create").click()
    playwright_api.expect(page.locator("h1")).to_have_text("Segment spring-cars")
    playwright_api.expect(page.locator("#record")).to_contain_text("seed")
    outcomes = tmp_path / "responses.csv"
    with outcomes.open("w", newline="") as f:  # every customer's response: those outside both groups are ignored
        writer = csv.writer(f)
        writer.writerow(["id", "outcome"])
        writer.writerows((cid, i % 3 == 0) for i, cid in enumerate(setup.bank_ids))
    page.locator("#outcomes-form input[type=file]").set_input_files(outcomes)
    page.locator("#outcomes-form").get_by_role("button", name="Read the result").click()
    playwright_api.expect(page.locator("#absolute-lift")).to_have_text(re.compile(r"^[+-]\d\.\d{3}$"))
    playwright_api.expect(page.locator("#result")).to_contain_text("responses.csv")
    shoot(page, setup, "bank-segment")
    page.goto(base(setup.bank_url) + "/segments")
    playwright_api.expect(page.locator("#segments")).to_contain_text("spring-cars")
    shoot(page, setup, "bank-segments")

    page.goto(base(setup.bank_url) + "/score")
    page.locator("#score-form select[name=model]").select_option("cars@prod")
    page.locator("#score-form [name=ids]").fill(f"{setup.shared_ids[0]}, {setup.shared_ids[1]}, +440000000000")
    page.locator("#score-form").get_by_role("button", name="Score").click()
    rows = page.locator("#scores tbody tr")
    playwright_api.expect(rows).to_have_count(3)
    playwright_api.expect(rows.nth(0)).to_contain_text("ok")
    playwright_api.expect(rows.nth(2)).to_contain_text("unknown_customer")
    shoot(page, setup, "bank-score")

    page.goto(base(setup.bank_url) + "/health")
    playwright_api.expect(page.locator("#platform-health")).to_have_text("reachable")
    shoot(page, setup, "bank-health")
    page.close()


def test_the_platform_operator_finds_the_approvals_in_the_audit(setup: Setup, browser: playwright_api.Browser) -> None:
    page = new_page(browser, setup, LAPTOP)
    page.goto(setup.platform_url)
    page.goto(base(setup.platform_url) + "/audit")
    page.locator("#audit-filter select[name=event]").select_option("approved")
    page.locator("#audit-filter").get_by_role("button", name="Filter").click()
    rows = page.locator("#audit tbody tr")
    playwright_api.expect(rows).to_have_count(3)
    for job in ("align", "first", "second"):
        playwright_api.expect(page.locator("#audit")).to_contain_text(setup.jobs[job])
    playwright_api.expect(rows.first).to_contain_text("(platform-node)")  # who approved: the host's user
    shoot(page, setup, "platform-audit")
    for path, name in (("/jobs", "platform-jobs"), ("/budget", "platform-budget"), ("/models", "platform-models"),
                       ("/policy", "platform-policy")):
        page.goto(base(setup.platform_url) + path)
        shoot(page, setup, name)
    playwright_api.expect(page.locator("#policy")).to_contain_text("manual")
    page.goto(base(setup.platform_url) + "/budget")
    playwright_api.expect(page.locator("#projections")).to_contain_text(setup.jobs["first"])  # the scores released
    page.close()


def test_every_page_fits_a_large_screen_and_no_page_logged_a_javascript_error(
        setup: Setup, browser: playwright_api.Browser) -> None:
    page = new_page(browser, setup, LARGE)
    first, second = setup.jobs.get("first"), setup.jobs.get("second")
    page.goto(setup.bank_url)
    bank_pages = ["/jobs", "/models", "/segments", "/segments/spring-cars", "/score", "/health"]
    if first and second:
        bank_pages += [f"/jobs/{first}", f"/jobs/{first}/report", f"/compare?job={first}&job={second}"]
    for path in bank_pages:
        page.goto(base(setup.bank_url) + path)
        shoot(page, setup, "bank" + re.sub(r"[^a-z]+", "-", path.split("?")[0].replace(first or "-", "job")))
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= LARGE["width"], f"{path} is {width} px wide"
    page.goto(setup.platform_url)
    for path in ("/queue", "/audit", "/budget"):
        page.goto(base(setup.platform_url) + path)
        shoot(page, setup, "platform" + path.replace("/", "-"))
    page.close()
    assert not setup.errors, "JavaScript errors:\n" + "\n".join(setup.errors)
