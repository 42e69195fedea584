"""The gallery OUT/index.html in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium):
it fits 1280 and 1920 px, every picture loads, a click lights up the regions `spix search` finds and ranks
them as it does (near-ties aside); and the compact search files the page computes on."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from helpers import run_spix, train_run_with_probe
from spix.inference.outputs import output_names, read_embeddings

LONG_NAME = "a_photo_with_a_file_name_far_too_long_for_its_column_" * 3 + "x.jpg"


@pytest.fixture(scope="module")
def gallery(toy_shards: Path, toy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny model trained here (no Ray) with its linear probe, and `spix infer --labels` of the held-out toy
    validation images in an ADE-layout data root (so the page has a ground-truth column), one with a long name."""
    base = tmp_path_factory.mktemp("gallery")
    run = train_run_with_probe(toy_shards, base / "run", epochs=4)
    root = base / "ADE"
    for kind in ("images", "annotations"):
        shutil.copytree(toy_root / kind / "validation", root / kind / "validation")
    first = sorted((root / "images" / "validation").glob("*.jpg"))[0]
    shutil.copy(first, first.with_name(LONG_NAME))
    shutil.copy(root / "annotations" / "validation" / f"{first.stem}.png", root / "annotations" / "validation" / f"{Path(LONG_NAME).stem}.png")
    shutil.copy(toy_root / "objectInfo150.csv", root / "objectInfo150.csv")
    folder, out = root / "images" / "validation", base / "out"
    result = run_spix("infer", str(folder), "--checkpoint", str(run), "--out", str(out), "--num-cpus", "2", "--labels")
    assert result.returncode == 0, result.stderr
    relpaths = sorted(p.name for p in folder.iterdir())
    return {"out": out, "folder": folder, "relpaths": relpaths, "names": output_names(relpaths)}


# ----------------------------------------------------------------------------- the search files (no browser)


def search_record(path: Path) -> dict[str, Any]:
    text = path.read_text()
    assert text.startswith("spixSearch.add(") and text.rstrip().endswith(");")
    return json.loads(text[len("spixSearch.add(") : text.rstrip().rindex(")")])


def decoded(record: dict[str, Any], key: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(record[key]), dtype)


@pytest.mark.slow
def test_search_files_hold_quantised_embeddings_and_the_sampled_map(gallery: dict[str, Any]) -> None:
    """Each OUT/search/<name>.js decodes (independently of the writer) to codes * step within half a step of the
    Parquet file's float16 embeddings, and to its superpixel map sampled every `stride` pixels."""
    for relpath in gallery["relpaths"]:
        name = gallery["names"][relpath]
        row = read_embeddings(gallery["out"] / "embeddings" / f"{name}.parquet")
        record = search_record(gallery["out"] / "search" / f"{name}.js")
        count, dim, stride = record["count"], record["dim"], record["stride"]
        assert (record["name"], record["relpath"], count, dim) == (name, relpath, row["num_superpixels"], row["dim"])
        assert (record["height"], record["width"]) == row["superpixels"].shape
        step = decoded(record, "step", "<f4")
        values = decoded(record, "mean", "<f4") + decoded(record, "codes", "i1").reshape(count, dim) * step[:, None]
        assert (np.abs(values - row["embeddings"].astype(np.float32)) <= step[:, None] / 2 + 1e-6).all()
        starts, ids = decoded(record, "run_starts", "<u4"), decoded(record, "run_ids", "<u2")
        lengths = np.diff(starts, append=record["map_height"] * record["map_width"])
        sampled = np.repeat(ids, lengths).reshape(record["map_height"], record["map_width"])
        np.testing.assert_array_equal(sampled, row["superpixels"][::stride, ::stride])
        assert max(sampled.shape) <= 256
        centroid = decoded(record, "centroid", "<f4").reshape(count, 2)
        ys, xs = np.nonzero(row["superpixels"] == count // 2)
        np.testing.assert_allclose(centroid[count // 2], [ys.mean(), xs.mean()], atol=1e-3)


# ----------------------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from the Debian packages, one for the module."""
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make setup` installs them when run as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def wait_for(driver: Any, script: str, *args: Any, timeout: float = 30) -> Any:
    """The value of `script` (run with `args`) once it is truthy."""
    deadline = time.monotonic() + timeout
    while not (value := driver.execute_script(script, *args)):
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.1)
    return value


def open_page(driver: Any, out: Path, width: int) -> None:
    driver.set_window_size(width, 900)
    driver.get((out / "index.html").as_uri())
    viewport = driver.execute_script("return window.innerWidth")
    driver.set_window_size(2 * width - viewport, 900)  # the viewport, not the window, is `width` wide
    assert driver.execute_script("return window.innerWidth") == width


ALL_LOADED = """
const images = Array.from(document.images);
images.forEach((image) => { image.loading = "eager"; });
return images.every((image) => image.complete) && images.map((image) => [image.getAttribute("src"), image.naturalWidth]);
"""
OVERFLOW = """
const page = document.documentElement, table = document.querySelector("table.gallery");
const names = Array.from(document.querySelectorAll("td.name")).filter((cell) => cell.scrollWidth > cell.clientWidth + 1);
return [page.scrollWidth, page.clientWidth, table.getBoundingClientRect().right, names.length];
"""


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 1920])
def test_the_page_fits_and_every_picture_loads(gallery: dict[str, Any], browser: Any, width: int) -> None:
    open_page(browser, gallery["out"], width)
    loaded = wait_for(browser, ALL_LOADED)
    assert all(natural > 0 for _, natural in loaded), [src for src, natural in loaded if not natural]
    sources = {src.split("/")[0] for src, _ in loaded}
    assert {"inputs", "features", "soft", "labels", "truth"} <= sources, sources
    page_width, client_width, table_right, overflowing_names = browser.execute_script(OVERFLOW)
    assert page_width <= client_width and table_right <= client_width and overflowing_names == 0
    headers = [cell.text for cell in browser.find_elements("css selector", "table.gallery th")]
    assert headers == ["file", "input (as processed)", "dominant features", "soft segmentation", "labels", "ground truth"]
    long_cell = browser.find_element("css selector", f'td.name[title="{LONG_NAME}"]')
    assert long_cell.size["width"] < 250 and long_cell.size["height"] < 250, long_cell.size
    assert "not classes" in browser.find_element("tag name", "body").text


def click(driver: Any, relpath: str, fraction_y: float, fraction_x: float) -> dict[str, Any]:
    """Click the input picture of `relpath` at a point given as fractions of its size; the page's query."""
    from selenium.webdriver.common.action_chains import ActionChains

    picture = driver.find_element("css selector", f'tr:has(td.name[title="{relpath}"]) .pic')
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", picture)
    size = picture.size
    ActionChains(driver).move_to_element_with_offset(
        picture, int((fraction_x - 0.5) * size["width"]), int((fraction_y - 0.5) * size["height"])).click().perform()
    return wait_for(driver, "const last = window.spixViewer.last; return last && last.relpath === arguments[0] && last", relpath)


def quantisation_bound(out: Path, relpath: str, superpixel: int) -> Any:
    """(relative path, superpixel, exact distance) -> how far the page's distance can be from the exact one.

    The page's vectors are within step/2 of the exact ones in every dimension (the step of each superpixel's
    codes), so the difference of two is off by at most r = sqrt(D) (step_a + step_b) / 2 in norm, and the
    squared distance d by at most 2 sqrt(d) r + r^2."""
    steps = {}
    for path in (out / "search").glob("*.js"):
        record = search_record(path)
        steps[record["relpath"]] = (decoded(record, "step", "<f4").astype(np.float64), record["dim"])
    own = steps[relpath][0][superpixel]

    def bound(match_relpath: str, match_superpixel: int, distance: float) -> float:
        step, dim = steps[match_relpath]
        r = np.sqrt(dim) * (own + step[match_superpixel]) / 2
        return float(2 * np.sqrt(distance) * r + r * r) + 1e-9

    return bound


def cli_ranking(out: Path, relpath: str, y: int, x: int, top: int) -> list[dict[str, Any]]:
    result = run_spix("search", str(out), "--image", relpath, "--point", f"{y},{x}", "--top", str(top), "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


MATCH_PIXELS = """  // pixels of the overlay in the colour of the best matches (alpha is premultiplied: allow rounding)
const canvas = arguments[0].querySelector("canvas.overlay");
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let count = 0;
for (let p = 0; p < data.length; p += 4) count += data[p] > 250 && Math.abs(data[p + 1] - 60) < 4 && data[p + 3] === 130;
return count;
"""


@pytest.mark.slow
def test_a_click_lights_up_the_regions_spix_search_finds_in_its_order(gallery: dict[str, Any], browser: Any) -> None:
    out = gallery["out"]
    open_page(browser, out, 1280)
    for relpath, fraction_y, fraction_x in [(gallery["relpaths"][1], 0.3, 0.6), (gallery["relpaths"][4], 0.8, 0.2)]:
        query = click(browser, relpath, fraction_y, fraction_x)
        row = read_embeddings(out / "embeddings" / f"{gallery['names'][relpath]}.parquet")
        assert query["superpixel"] == row["superpixels"][query["y"], query["x"]], "the page picks the superpixel spix search does"
        page = query["ranking"]
        assert len(page) == 10 and query["images"] == len(gallery["relpaths"])
        everything = cli_ranking(out, relpath, query["y"], query["x"], 100_000)
        exact = {(m["relative_path"], m["superpixel"]): m["distance"] for m in everything}
        bound = quantisation_bound(out, relpath, query["superpixel"])
        for match in page:
            distance = exact[(match["relpath"], match["superpixel"])]
            assert abs(match["distance"] - distance) <= bound(match["relpath"], match["superpixel"], distance)
        # Every page distance is within `worst` of the exact one, so the page's k-th match is within 2 * worst of
        # the exact k-th distance: ranks may differ only among matches that close (near-ties).
        worst = max(bound(m["relative_path"], m["superpixel"], m["distance"]) for m in everything[:20])
        worst = max([worst] + [bound(m["relpath"], m["superpixel"], exact[(m["relpath"], m["superpixel"])]) for m in page])
        for rank, match in enumerate(page):
            assert abs(exact[(match["relpath"], match["superpixel"])] - everything[rank]["distance"]) <= 2 * worst
        top = cli_ranking(out, relpath, query["y"], query["x"], 10)
        assert top == everything[:10]
        swaps = sum(a["relative_path"] != b["relpath"] or a["superpixel"] != b["superpixel"] for a, b in zip(top, page))
        print(f"{relpath} at ({query['y']}, {query['x']}): {swaps} of 10 ranks differ from spix search "
              f"(near-ties within {2 * worst:.2g}, the 10th distance is {everything[9]['distance']:.3g}), {query['ms']:.1f} ms")
        strip = browser.find_elements("css selector", "#search-strip figure")
        assert [(f.get_attribute("data-relpath"), int(f.get_attribute("data-superpixel"))) for f in strip] == \
            [(m["relpath"], m["superpixel"]) for m in page]
        matched = {m["relpath"] for m in page}
        marked = {r.find_element("css selector", "td.name").get_attribute("title")
                  for r in browser.find_elements("css selector", "tr.match")}
        assert marked == matched
        for relpath_matched in sorted(matched)[:3]:
            table_row = browser.find_element("css selector", f'tr:has(td.name[title="{relpath_matched}"])')
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", table_row)
            assert wait_for(browser, MATCH_PIXELS, table_row), f"no region of {relpath_matched} lit as a match"
