"""The inference server (jaxcifar.serve), run as a real process on a free local port."""

import concurrent.futures
import contextlib
import json
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the serve tests need the test extra: pip install -e '.[test]'")
yaml = pytest.importorskip("yaml")
parser = pytest.importorskip("prometheus_client.parser")
from PIL import Image  # noqa: E402

from jaxcifar import data, export, predict  # noqa: E402
from jaxcifar import data as data_lib
from jaxcifar.image_files import read_image  # noqa: E402
from jaxcifar.testing import synthetic_split, tiny_config  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to

pytestmark = pytest.mark.slow  # a server process and a browser

MAX_BATCH = 8
MAX_BODY = 1_000_000
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
CHROMIUM, CHROMEDRIVER = pathlib.Path("/usr/bin/chromium"), pathlib.Path("/usr/bin/chromedriver")


class Server:
    """`python -m jaxcifar.serve ARGS` on a free port, with its output in a log file."""

    def __init__(self, args: list[str], log: pathlib.Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen([sys.executable, "-m", "jaxcifar.serve", "--port", str(self.port), *args],
                                        cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited early:\n{self.log.read_text()}"
            try:
                if httpx.get(f"{self.url}/v2/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def infer_request(images: np.ndarray, nested: bool = False, **fields) -> dict:
    data = images.tolist() if nested else images.ravel().tolist()
    return {"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "UINT8", "data": data}], **fields}


def outputs_of(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in response.json()["outputs"]}


def metric_samples(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of /metrics, parsed by prometheus_client's parser."""
    text = httpx.get(f"{url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    # A long enough wait that concurrent test requests reliably share a batch.
    srv = Server(["--workdir", str(run.workdir), "--checkpoint", "latest", "--max_batch", str(MAX_BATCH),
                  "--max_wait_ms", "20", "--max_body_bytes", str(MAX_BODY)], tmp_path_factory.mktemp("log") / "log")
    try:
        srv.wait_ready()
        yield srv.url
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """One file per kind of upload predict must accept: sizes, modes, formats."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    files = {"rgb.png": Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)),
             "photo.jpg": Image.fromarray(rng.integers(0, 256, (48, 40, 3), np.uint8)),
             "grey.png": Image.fromarray(rng.integers(0, 256, (32, 32), np.uint8), mode="L"),
             "rgba.png": Image.fromarray(rng.integers(0, 256, (32, 32, 4), np.uint8), mode="RGBA"),
             "large.png": Image.fromarray(rng.integers(0, 256, (300, 700, 3), np.uint8))}
    for name, image in files.items():
        image.save(d / name)
    return [d / name for name in files]


@pytest.mark.parametrize("max_batch, buckets", [(1, (1,)), (48, (1, 2, 4, 8, 16, 32, 48)),
                                                (64, (1, 2, 4, 8, 16, 32, 64))])
def test_batches_run_as_exact_compiled_pieces(max_batch, buckets):
    from jaxcifar.serve.batching import batch_buckets, bucket_pieces

    assert batch_buckets(max_batch) == buckets
    for n in range(1, max_batch + 1):
        pieces = bucket_pieces(n, buckets)
        assert sum(pieces) == n and set(pieces) <= set(buckets) and pieces == sorted(pieces, reverse=True)
    assert bucket_pieces(37, batch_buckets(64)) == [32, 4, 1]


def test_health_and_model_metadata(server, run):
    import jaxcifar

    assert httpx.get(f"{server}/v2").json() == {"name": "jaxcifar", "version": jaxcifar.__version__, "extensions": []}
    assert httpx.get(f"{server}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server}/v2/health/ready").json() == {"ready": True}
    name = run.workdir.name  # the served model is named after its folder, and answers to "jaxcifar" too
    for alias in (name, "jaxcifar"):
        assert httpx.get(f"{server}/v2/models/{alias}/ready").json() == {"name": name, "ready": True}
        assert httpx.get(f"{server}/v2/models/{alias}").json()["name"] == name
    meta = httpx.get(f"{server}/v2/models/{name}").json()
    assert meta["versions"] == [str(run.step)] and meta["platform"] == "jax_orbax"
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("logits", "FP32", [-1, 10]), ("probabilities", "FP32", [-1, 10])]
    assert meta["parameters"]["class_names"] == list(run.class_names)
    assert meta["parameters"]["step"] == run.step
    summary = json.loads((run.workdir / "summary.json").read_text())
    assert meta["parameters"]["accuracy"] == summary["test_accuracy"]


def test_infer_answers_are_run_logits_for_flat_nested_and_oversized_requests(server, run):
    images = synthetic_split(2 * MAX_BATCH + 3, 5).images  # more than max_batch: split over batches
    expected = np.asarray(run.logits(images))
    for nested in (False, True):
        response = httpx.post(f"{server}/v2/models/jaxcifar/infer", json=infer_request(images, nested, id="r1"))
        outputs = outputs_of(response)
        assert response.json()["id"] == "r1" and response.json()["model_version"] == str(run.step)
        np.testing.assert_allclose(outputs["logits"], expected, atol=1e-4)
        probabilities = np.exp(expected) / np.exp(expected).sum(-1, keepdims=True)
        np.testing.assert_allclose(outputs["probabilities"], probabilities, atol=1e-5)
    only = httpx.post(f"{server}/v2/models/jaxcifar/infer",
                      json=infer_request(images[:1], outputs=[{"name": "probabilities"}]))
    assert list(outputs_of(only)) == ["probabilities"]


def test_uploads_agree_with_jaxcifar_predict(server, run, image_files):
    files = [("file", (p.name, p.read_bytes())) for p in image_files]
    response = httpx.post(f"{server}/v1/predict", params={"top_k": 10}, files=files)
    assert response.status_code == 200, response.text
    served = response.json()["results"]
    offline = predict.predict_files(run, [str(p) for p in image_files], k=10)
    assert [r["file"] for r in served] == [p.name for p in image_files]
    for got, want in zip(served, offline):
        assert [p["class"] for p in got["predictions"]] == [p["class"] for p in want["predictions"]]
        np.testing.assert_allclose([p["probability"] for p in got["predictions"]],
                                   [p["probability"] for p in want["predictions"]], atol=1e-5)
    top3 = httpx.post(f"{server}/v1/predict", files=files[:1], params={"top_k": 3}).json()
    assert len(top3["results"][0]["predictions"]) == 3
    default = httpx.post(f"{server}/v1/predict", files=files[:1]).json()
    assert len(default["results"][0]["predictions"]) == 5


def test_no_compilation_after_warm_up_for_any_request_size(server):
    before = metric_samples(server)
    sizes = [*range(1, MAX_BATCH + 1), MAX_BATCH + 5]
    for n in sizes:
        outputs_of(httpx.post(f"{server}/v2/models/jaxcifar/infer", json=infer_request(synthetic_split(n, n).images)))
    after = metric_samples(server)
    assert value(before, "jaxcifar_xla_compilations_total") >= 4  # warm-up compiled buckets 1, 2, 4, 8
    assert value(after, "jaxcifar_xla_compilations_total") == value(before, "jaxcifar_xla_compilations_total")
    assert value(after, "jaxcifar_batch_size_sum") - value(before, "jaxcifar_batch_size_sum") == sum(sizes)


def test_concurrent_requests_share_batches(server):
    before = metric_samples(server)
    body = infer_request(synthetic_split(1, 3).images)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: httpx.post(f"{server}/v2/models/jaxcifar/infer", json=body), range(16)))
    assert all(r.status_code == 200 for r in responses)
    after = metric_samples(server)
    batches = value(after, "jaxcifar_batch_size_count") - value(before, "jaxcifar_batch_size_count")
    assert value(after, "jaxcifar_batch_size_sum") - value(before, "jaxcifar_batch_size_sum") == 16
    assert batches < 16, "every request ran alone: no dynamic batching"
    assert value(after, "jaxcifar_batch_size_bucket", le="1.0") < value(after, "jaxcifar_batch_size_count")


def _tensor(**changes) -> dict:
    tensor = infer_request(np.zeros((1, 32, 32, 3), np.uint8))["inputs"][0]
    return {"inputs": [{**tensor, **changes}]}


INFER = "/v2/models/jaxcifar/infer"
BAD_REQUESTS = {
    "malformed json": ("POST", INFER, {"content": b'{"inputs": ['}, 400, "Malformed JSON"),
    "empty body": ("POST", INFER, {"content": b""}, 400, "Empty request body"),
    "no inputs": ("POST", INFER, {"json": {"input": []}}, 400, "one input tensor"),
    "wrong input name": ("POST", INFER, {"json": _tensor(name="x")}, 400, "named 'images'"),
    "float dtype": ("POST", INFER, {"json": _tensor(datatype="FP32")}, 400, "datatype UINT8"),
    "no batch axis": ("POST", INFER, {"json": _tensor(shape=[32, 32, 3])}, 400, "shape [b, 32, 32, 3]"),
    "wrong image size": ("POST", INFER, {"json": _tensor(shape=[1, 28, 28, 3])}, 400, "shape [b, 32, 32, 3]"),
    "data shorter than shape": ("POST", INFER, {"json": _tensor(shape=[2, 32, 32, 3])}, 400, "needs 6144"),
    "pixel out of range": ("POST", INFER, {"json": _tensor(data=[256] * 3072)}, 400, "within 0..255"),
    "float pixels": ("POST", INFER, {"json": _tensor(data=[0.5] * 3072)}, 400, "within 0..255"),
    "ragged data": ("POST", INFER, {"json": _tensor(data=[[0, 1], [2]])}, 400, "ragged"),
    "unknown output": ("POST", INFER, {"json": {**_tensor(), "outputs": [{"name": "x"}]}}, 400, "outputs"),
    "unknown model infer": ("POST", "/v2/models/nope/infer", {"json": _tensor()}, 404, "Unknown model 'nope'"),
    "unknown model metadata": ("GET", "/v2/models/nope", {}, 404, "Unknown model"),
    "unknown model ready": ("GET", "/v2/models/nope/ready", {}, 404, "Unknown model"),
    "unknown route": ("GET", "/v3/nothing", {}, 404, "Not Found"),
    "json body over limit": ("POST", INFER, {"content": b"[" + b" " * MAX_BODY + b"]"}, 413, "server's limit"),
    # A tuple of chunks: httpx streams any iterable without a Content-Length (chunked).
    "chunked body over limit": ("POST", INFER, {"content": (b" " * 600_000,) * 2}, 413, "server's limit"),
    "upload over limit": ("POST", "/v1/predict", {"files": {"file": ("big.png", b"x" * (MAX_BODY + 1))}}, 413, "limit"),
    "non-image upload": ("POST", "/v1/predict", {"files": {"file": ("notes.txt", b"hello")}}, 400,
                         "notes.txt: not an image"),
    "empty upload": ("POST", "/v1/predict", {"files": {"file": ("empty.png", b"")}}, 400, "empty.png"),
    "no file field": ("POST", "/v1/predict", {"data": {"other": "1"}}, 400, "form field 'file'"),
    "not multipart": ("POST", "/v1/predict", {"content": b"abc"}, 400, "form field 'file'"),
    "bad top_k": ("POST", "/v1/predict?top_k=11", {"files": {"file": ("a.png", b"x")}}, 400, "top_k must be within"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_get_clear_json_errors(server, case):
    method, path, kwargs, status, message = BAD_REQUESTS[case]
    response = httpx.request(method, f"{server}{path}", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def server_errors(url: str) -> float:
    """5xx responses so far, not counting the readiness probes' 503 during warm-up."""
    return sum(n for (name, labels), n in metric_samples(url).items() if name == "jaxcifar_requests_total"
               and dict(labels)["status"].startswith("5") and not dict(labels)["route"].endswith("ready"))


def test_bad_requests_never_cause_server_errors(server):
    before = server_errors(server)
    for method, path, kwargs, _, _ in BAD_REQUESTS.values():
        httpx.request(method, f"{server}{path}", **kwargs)
    outputs_of(httpx.post(f"{server}{INFER}", json=infer_request(synthetic_split(1, 0).images)))
    assert server_errors(server) == before


def test_metrics_parse_and_record_requests_predictions_and_model(server, run):
    before = metric_samples(server)
    images = synthetic_split(3, 9).images
    outputs = outputs_of(httpx.post(f"{server}{INFER}", json=infer_request(images)))
    httpx.get(f"{server}/v2/models/nope")
    after = metric_samples(server)
    ok = dict(name="jaxcifar_requests_total", route="/v2/models/{name}/infer", method="POST", status="200")
    assert value(after, **ok) - value(before, **ok) == 1
    missing = dict(name="jaxcifar_requests_total", route="/v2/models/{name}", method="GET", status="404")
    assert value(after, **missing) - value(before, **missing) == 1
    assert value(after, "jaxcifar_request_duration_seconds_count", route="/v2/models/{name}/infer") >= 1
    assert value(after, "jaxcifar_requests_in_flight") == 1  # the /metrics request itself
    confidences = "jaxcifar_prediction_confidence_count"
    assert value(after, confidences) - value(before, confidences) == 3
    predicted = np.asarray(run.class_names)[outputs["probabilities"].argmax(-1)]
    for name in set(predicted):
        key = dict(name="jaxcifar_predicted_class_total", class_name=name)
        assert value(after, **key) - value(before, **key) == (predicted == name).sum()
    info = next(labels for (name, labels), _ in after.items() if name == "jaxcifar_model_info")
    assert dict(info)["name"] == run.workdir.name and dict(info)["step"] == str(run.step)
    assert value(after, "jaxcifar_model_ready") == 1


def test_alert_rules_only_use_exported_metrics(server):
    outputs_of(httpx.post(f"{server}{INFER}", json=infer_request(synthetic_split(1, 0).images)))
    exported = {name for name, _ in metric_samples(server)}
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    assert {"JaxcifarHighErrorRate", "JaxcifarHighLatencyP95", "JaxcifarFallingConfidence"} <= {
        r["alert"] for r in rules}
    for rule in rules:
        used = set(re.findall(r"\bjaxcifar_\w+", rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)
        assert rule["labels"]["severity"] and rule["annotations"]["summary"]


@contextlib.contextmanager
def chromium(tmp_path: pathlib.Path):
    """A headless Debian Chromium driven by Selenium; a skip where it is absent."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian chromium and chromium-driver are not installed (.ci/run installs them: "
                    "apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def shown_results(driver, count: int) -> list[tuple[str, list[tuple[str, float]]]]:
    """(file name, [(class, probability)]) of each result on the page, once `count` are shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == count
                                    or d.find_element(By.ID, "error").text)
    assert driver.find_element(By.ID, "error").text == ""
    return [(result.find_element(By.TAG_NAME, "h2").text,
             [(row.find_element(By.CLASS_NAME, "class").text, float(row.find_element(By.CLASS_NAME, "probability").text))
              for row in result.find_elements(By.CSS_SELECTOR, "tbody tr")])
            for result in driver.find_elements(By.CSS_SELECTOR, "#results .result")]


def test_web_page_classifies_a_cifar_image_in_chromium(server, run, tmp_path, shared_data_dir):
    from selenium.webdriver.common.by import By

    page = httpx.get(f"{server}/").text
    assert "/v1/predict" in page and not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from the network
    png = tmp_path / "cifar_test_0.png"
    Image.fromarray(cifar_test_image(shared_data_dir)).save(png)
    with chromium(tmp_path) as driver:
        driver.get(f"{server}/")
        driver.find_element(By.ID, "file").send_keys(str(png))
        [(name, shown)] = shown_results(driver, 1)
    expected = predict.predict_files(run, [str(png)], k=5)[0]["predictions"]
    assert name == png.name and [name for name, _ in shown] == [p["class"] for p in expected]
    np.testing.assert_allclose([p for _, p in shown], [p["probability"] for p in expected], atol=1e-4)


def cifar_test_image(data_dir: str) -> np.ndarray:
    """The first image of the prepared CIFAR-10 test split."""
    return data.load_split("test[:1]", data_dir).images[0]


def slow_body(body: bytes, pause: float):
    """A request body sent in two chunks `pause` seconds apart: a slow client, still in flight."""
    yield body[:100]
    time.sleep(pause)
    yield body[100:]


def test_exported_model_is_served_and_sigterm_drains_in_flight_requests(run, tmp_path):
    export.export_run(run, tmp_path / "exported", "stablehlo", platforms=("cpu",))
    srv = Server(["--export", str(tmp_path / "exported"), "--max_batch", "4", "--max_wait_ms", "5000"],
                 tmp_path / "log")
    try:
        srv.wait_ready()
        meta = httpx.get(f"{srv.url}/v2/models/jaxcifar").json()
        assert meta["platform"] == "jax_stablehlo" and meta["versions"] == [str(run.step)]
        [ready] = [line for line in srv.log.read_text().splitlines() if "Ready:" in line]
        assert f"'exported' (step {run.step})" in ready, ready
        assert f"{srv.url}/v1/predict" in ready and f"{srv.url}/v2/models/exported/infer" in ready, ready
        images = synthetic_split(1, 4).images
        body = json.dumps(infer_request(images)).encode()
        start = time.monotonic()
        outputs_of(httpx.post(f"{srv.url}{INFER}", content=body))
        assert time.monotonic() - start < 2.5, "a lone request waited max_wait_ms for companions that never came"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, f"{srv.url}{INFER}", content=slow_body(body, 2.0), timeout=30)
            time.sleep(1.0)
            srv.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(httpx.ConnectError):  # no new connections while draining
                httpx.get(f"{srv.url}/v2/health/live")
            assert not in_flight.done()
            response = in_flight.result()
        np.testing.assert_allclose(outputs_of(response)["logits"], np.asarray(run.logits(images)), atol=1e-4)
        # uvicorn re-raises the signal once drained, so the exit says "terminated by SIGTERM".
        assert srv.process.wait(timeout=30) == -signal.SIGTERM, srv.log.read_text()
        assert "Finished server process" in srv.log.read_text()
    finally:
        srv.stop()


def test_cli_refuses_a_directory_that_is_not_a_run(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jaxcifar.serve", "--workdir", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not a jaxcifar workdir" in result.stderr


CLASSES = ("apple", "bicycle", "cloud")  # not CIFAR-10's: the page must show these


def three_class_split(n: int, seed: int) -> data.ArraySplit:
    split = synthetic_split(n, seed)
    return data.ArraySplit(split.images, split.labels % len(CLASSES))


@pytest.fixture(scope="module")
def litert_export(tmp_path_factory):
    """A run with its own 3 classes, as the LiteRT int8 artefact `jaxcifar.quantize` writes."""
    from jaxcifar import quantize, runs, train

    root = tmp_path_factory.mktemp("litert")
    train.fit(tiny_config(epochs=1), root / "run", data=data_lib.Data(three_class_split(256, 0), three_class_split(40, 1),
                                                                   len(CLASSES), class_names=CLASSES))
    run = runs.load_run(root / "run", "latest")
    quantize.export_litert(run, root / "litert_int8", tta=False, calibration=three_class_split(64, 2).images)
    return root / "litert_int8"


def drop_zone_geometry(driver) -> dict:
    """label#drop's display and its boxes: an inline label that wraps draws one box per line."""
    return driver.execute_script(
        "const drop = document.getElementById('drop');"
        "const box = drop.getBoundingClientRect();"
        "const parent = getComputedStyle(drop.parentElement);"
        "return {display: getComputedStyle(drop).display, boxes: drop.getClientRects().length, width: box.width,"
        "        content_width: drop.parentElement.clientWidth - parseFloat(parent.paddingLeft)"
        "                       - parseFloat(parent.paddingRight)};")


def test_a_litert_int8_export_is_served_and_its_page_shows_its_own_classes(litert_export, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    srv = Server(["--export", str(litert_export), "--max_batch", "4"], tmp_path / "log")
    try:
        srv.wait_ready()
        meta = httpx.get(f"{srv.url}/v2/models/jaxcifar").json()
        assert meta["platform"] == "litert_tflite" and meta["parameters"]["device"] == "cpu"
        assert meta["parameters"]["class_names"] == list(CLASSES)
        offline = export.load_exported(litert_export)
        images = synthetic_split(6, 7).images  # 6 > max_batch: two batches, pieces of the converted sizes
        np.testing.assert_allclose(outputs_of(httpx.post(f"{srv.url}{INFER}", json=infer_request(images)))["logits"],
                                   offline(images), atol=1e-6)
        files = []
        for i, image in enumerate(synthetic_split(2, 8).images):
            files.append(tmp_path / f"image_{i}.png")
            Image.fromarray(image).save(files[-1])
        with chromium(tmp_path) as driver:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # a 1200x900 page, whatever the window
                                   {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False})
            driver.get(f"{srv.url}/")
            WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "classes").text)
            assert driver.find_element(By.ID, "classes").text == "3 classes: apple, bicycle, cloud."
            assert "airplane" not in driver.find_element(By.TAG_NAME, "body").text
            assert f"step {meta['parameters']['step']}" in driver.find_element(By.ID, "model").text
            geometry = drop_zone_geometry(driver)
            driver.find_element(By.ID, "file").send_keys("\n".join(map(str, files)))  # several files at once
            shown = shown_results(driver, len(files))
            driver.save_screenshot(str(tmp_path / "page.png"))  # to look at: one dashed box, two results
    finally:
        srv.stop()
    assert Image.open(tmp_path / "page.png").size == (1200, 900)
    assert geometry["display"] == "block" and geometry["boxes"] == 1, geometry
    assert geometry["width"] == pytest.approx(geometry["content_width"], abs=1), geometry  # one box, full width
    assert [name for name, _ in shown] == [f.name for f in files]
    logits = np.asarray(offline(np.stack([read_image(f, 32) for f in files])))
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for (_, predictions), p in zip(shown, expected):  # top-5 of 3 classes: all 3, most probable first
        assert [name for name, _ in predictions] == [CLASSES[i] for i in np.argsort(-p)]
        np.testing.assert_allclose([q for _, q in predictions], np.sort(p)[::-1], atol=1e-4)
