"""The console in a real browser: Debian's headless Chromium, driven over WebDriver
(chromium-driver) by Selenium, against the cluster of the README's quick start (`lockstep
dev`: three nodes, the example workflows, the console).

A requester signs in, starts a purchase order and submits it, and sees its SLA start; an
approver finds it in the inbox and approves it; an intern attempts a transition and sees the
engine's refusal; an open page updates without a reload when another client changes the
instance; a value holding a script shows as text; no page logs a JavaScript error. Every page
is saved as a screenshot (``$LOCKSTEP_SCREENSHOTS``, else a temporary folder); with
``LOCKSTEP_SCREENSHOTS=docs/console`` this test remakes the README's pictures.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from lockstep import Client, Identity, Options

REPO = Path(__file__).resolve().parents[2]
# How long `lockstep dev` may take to elect a leader and apply the examples (debug build).
START_SECONDS = 90.0
# How long a page may take to show what the test waits for.
WAIT_SECONDS = 20.0
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def bin_dir() -> Path:
    explicit = os.environ.get("LOCKSTEP_BIN_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))) / "debug"


def free_run(count: int) -> int:
    """The first of `count` consecutive free loopback ports."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            base: int = s.getsockname()[1]
        if base + count >= 65535:
            continue
        ok = True
        for port in range(base, base + count):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no run of free loopback ports")


class Dev:
    """`lockstep dev` as a user starts it, with its ports and console URL."""

    def __init__(self, directory: Path) -> None:
        self.base = free_run(3)
        self.console_port = free_run(3)
        self.log = directory / "dev.out"
        self.process = subprocess.Popen(
            [
                str(bin_dir() / "lockstep"),
                "dev",
                "--fresh",
                "--data-dir",
                str(directory / "dev"),
                "--base-port",
                str(self.base),
                "--console-port",
                str(self.console_port),
                "--workflows",
                str(REPO / "examples" / "workflows"),
            ],
            cwd=REPO,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if "Console: http://" in text:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"lockstep dev exited:\n{text}")
            time.sleep(0.2)
        raise RuntimeError(f"lockstep dev did not start in {START_SECONDS} s:\n{self.log.read_text()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"

    def client(self, actor: str, roles: List[str]) -> Client:
        endpoints = [f"127.0.0.1:{self.base + i}" for i in range(3)]
        return Client(
            endpoints,
            identity=Identity(actor, "human", roles),
            options=Options(attempt_timeout=10.0, total_timeout=20.0),
        )

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def dev() -> Iterator[Dev]:
    with tempfile.TemporaryDirectory(prefix="lockstep-console-") as d:
        cluster = Dev(Path(d))
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="module")
def shots() -> Iterator[Path]:
    explicit = os.environ.get("LOCKSTEP_SCREENSHOTS")
    if explicit:
        path = Path(explicit)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="lockstep-console-shots-") as d:
        yield Path(d)


@pytest.fixture()
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900"]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def no_script_errors(driver: WebDriver) -> None:
    """No script error and no failed load of a script, style or feed; the page's own status
    (403 for a refusal) is the answer, not an error."""
    own = driver.current_url.split("#")[0]
    errors = [
        e
        for e in driver.get_log("browser")
        if e.get("level") == "SEVERE" and not (e.get("source") == "network" and str(e.get("message", "")).startswith(own + " "))
    ]
    assert not errors, f"JavaScript errors on {driver.current_url}: {errors}"


def visit(driver: WebDriver, url: str) -> None:
    driver.get(url)
    no_script_errors(driver)


def shot(driver: WebDriver, folder: Path, name: str) -> None:
    no_script_errors(driver)
    driver.save_screenshot(str(folder / f"{name}.png"))


def sign_in(driver: WebDriver, dev: Dev, actor: str, roles: str) -> None:
    visit(driver, dev.url + "/signin")
    driver.find_element(By.NAME, "id").send_keys(actor)
    driver.find_element(By.NAME, "roles").send_keys(roles)
    driver.find_element(By.CSS_SELECTOR, "form.card button[type=submit]").click()
    WebDriverWait(driver, WAIT_SECONDS).until(lambda d: d.current_url.endswith("/inbox"))
    assert actor in driver.find_element(By.CSS_SELECTOR, ".who").text


def sign_out(driver: WebDriver) -> None:
    driver.find_element(By.CSS_SELECTOR, ".who button").click()
    WebDriverWait(driver, WAIT_SECONDS).until(lambda d: d.current_url.endswith("/signin"))


def state(driver: WebDriver) -> str:
    """The instance page's state, or "" while the page is being replaced (a form's redirect or
    a live update swapping the content under the lookup), so that a wait looks again."""
    try:
        text: str = driver.find_element(By.CSS_SELECTOR, "main p .state").text
    except StaleElementReferenceException:
        return ""
    except WebDriverException as error:
        if "does not belong to the document" in str(error):
            return ""
        raise
    return text


def test_a_purchase_order_from_request_to_approval(dev: Dev, browser: WebDriver, shots: Path) -> None:
    driver = browser
    key = f"PO-{int(time.time() * 1000) % 10**8}"

    # The requester starts an order from the definition page (its graph drawn as SVG).
    sign_in(driver, dev, "alice", "requester")
    shot(driver, shots, "inbox-empty")
    visit(driver, dev.url + "/workflows")
    shot(driver, shots, "workflows")
    driver.find_element(By.LINK_TEXT, "purchase-order").click()
    assert driver.find_elements(By.CSS_SELECTOR, "figure.graph svg"), "no definition graph"
    shot(driver, shots, "definition-empty")
    driver.find_element(By.NAME, "key").send_keys(key)
    data = driver.find_element(By.NAME, "data")
    data.clear()
    data.send_keys('{"amount": 250, "requester": "alice", "supplier": "Paper & Co", "note": "<script>window.hacked = 1</script>"}')
    driver.find_element(By.CSS_SELECTOR, "form[action$='/instances'] button[type=submit]").click()
    WebDriverWait(driver, WAIT_SECONDS).until(lambda d: "/instances/" in d.current_url)
    no_script_errors(driver)
    # The script in the data is shown as text and never ran.
    assert "<script>window.hacked = 1</script>" in driver.find_element(By.CSS_SELECTOR, "pre.json").text
    assert driver.execute_script("return window.hacked === undefined")
    assert state(driver) == "draft"
    instance_url = driver.current_url

    # Submitting starts the approval SLA.
    driver.find_element(By.CSS_SELECTOR, "#take-submit button[type=submit]").click()
    WebDriverWait(driver, WAIT_SECONDS).until(lambda d: state(d) == "submitted")
    clock = driver.find_element(By.CSS_SELECTOR, ".sla-clock").text
    assert "approval" in clock and "running" in clock, clock
    assert "Europe/Berlin" in clock, clock
    sign_out(driver)

    # The approver finds it in the inbox.
    sign_in(driver, dev, "bob", "approver")
    WebDriverWait(driver, WAIT_SECONDS).until(lambda d: key in d.find_element(By.CSS_SELECTOR, "main").text)
    shot(driver, shots, "inbox")
    driver.find_element(By.LINK_TEXT, key).click()
    WebDriverWait(driver, WAIT_SECONDS).until(lambda d: d.find_elements(By.ID, "take-approve"))

    # Another approver asks the requester a question through the API: bob's open page shows
    # it without a reload, and again when alice answers.
    WebDriverWait(driver, WAIT_SECONDS).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-live") == "open")
    marker = driver.execute_script("window.__sameDocument = true; return true")
    assert marker
    carol = dev.client("carol", ["approver"])
    alice = dev.client("alice", ["requester"])
    try:
        instance_id = instance_url.rsplit("/", 1)[1]
        carol.transition(instance_id, "ask", {})
        WebDriverWait(driver, WAIT_SECONDS).until(lambda d: state(d) == "waiting_on_requester")
        assert driver.execute_script("return window.__sameDocument === true"), "the page was reloaded"
        alice.transition(instance_id, "answer", {})
        WebDriverWait(driver, WAIT_SECONDS).until(lambda d: state(d) == "submitted")
        assert driver.execute_script("return window.__sameDocument === true"), "the page was reloaded"
    finally:
        carol.close()
        alice.close()
    shot(driver, shots, "instance")

    # Bob approves.
    driver.find_element(By.CSS_SELECTOR, "#take-approve button[type=submit]").click()
    WebDriverWait(driver, WAIT_SECONDS).until(lambda d: state(d) == "approved")
    timeline = driver.find_element(By.CSS_SELECTOR, "table.timeline").text
    assert "approve" in timeline and "bob" in timeline, timeline
    visit(driver, dev.url + "/audit?verify=1")
    verdicts = [row.find_elements(By.TAG_NAME, "td")[1].text for row in driver.find_elements(By.CSS_SELECTOR, "table.chains tbody tr")]
    assert verdicts == ["verified"] * 3, verdicts
    shot(driver, shots, "audit")
    visit(driver, dev.url + "/cluster")
    shot(driver, shots, "cluster")
    # The definition page counts the instances in each state (kept by apply).
    visit(driver, dev.url + "/workflows/purchase-order")
    assert "approved: " in driver.find_element(By.CSS_SELECTOR, "p.states").text
    shot(driver, shots, "definition")
    visit(driver, dev.url + f"/instances?workflow=purchase-order")
    shot(driver, shots, "instances")
    sign_out(driver)

    # An intern attempts a transition the engine did not offer: the refusal says why.
    sign_in(driver, dev, "mallory", "intern")
    visit(driver, instance_url)
    assert not driver.find_elements(By.ID, "take-place"), "place offered to a human intern"
    driver.find_element(By.CSS_SELECTOR, "details.attempt summary").click()
    Select(driver.find_element(By.CSS_SELECTOR, "#attempt select[name=transition]")).select_by_value("place")
    driver.find_element(By.CSS_SELECTOR, "#attempt button[type=submit]").click()
    try:
        WebDriverWait(driver, WAIT_SECONDS).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".refusal"))
    except TimeoutException:
        raise AssertionError(driver.page_source)
    refusal = driver.find_element(By.CSS_SELECTOR, ".refusal").text
    assert "FORBIDDEN" in refusal, refusal
    shot(driver, shots, "refusal")
    assert state(driver) == "approved"
