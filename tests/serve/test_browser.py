"""The page in a real headless browser (Debian chromium through Selenium): compose -> hear it -> find it."""

from __future__ import annotations

import os
import shutil
import time
import uuid

import pytest
from serve_helpers import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium and chromedriver are missing: run `bash scripts/setup.sh`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_compose_hear_and_find_in_library(live_server, browser):
    from selenium.webdriver.common.by import By

    browser.get(live_server.url + "/")
    find = browser.find_element
    wait_until(lambda: "model ready" in find(By.ID, "server-status").text, 60, "the model to be ready")

    assert not find(By.ID, "token-box").is_displayed()  # this server has no token
    title = f"Browser song {uuid.uuid4().hex[:6]}"
    find(By.ID, "title").send_keys(title)
    find(By.CSS_SELECTOR, '#section-buttons [data-section="verse"]').click()
    find(By.ID, "lyrics").send_keys("Walking by the river")
    find(By.CSS_SELECTOR, '#section-buttons [data-section="chorus"]').click()
    find(By.ID, "lyrics").send_keys("la la la")
    assert find(By.ID, "lyrics").get_property("value") == "[verse]\nWalking by the river\n\n[chorus]\nla la la"
    chips = wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#tag-suggestions button"), 10, "tag chips")
    chips[0].click()
    assert find(By.ID, "tags").get_property("value") == chips[0].text
    duration = find(By.ID, "duration")
    duration.clear()
    duration.send_keys("3")
    find(By.ID, "seed").send_keys("7")
    find(By.ID, "create").click()

    # The finished song loads into the player and plays: not paused, time advancing (or played to its end).
    playing = """
        const p = document.getElementById('player');
        return {src: p.currentSrc, paused: p.paused, time: p.currentTime, ended: p.ended,
                played: p.played.length ? p.played.end(0) : 0, error: p.error && p.error.code};
    """
    state = wait_until(lambda: (s := browser.execute_script(playing))["time"] > 0 and s, 120, "audio to play")
    assert "/api/songs/" in state["src"] and state["error"] is None
    assert not state["paused"] or state["ended"]
    time.sleep(0.4)
    later = browser.execute_script(playing)
    assert later["time"] > state["time"] or later["ended"], (state, later)
    assert find(By.ID, "now-playing").text == title
    assert "done" in find(By.ID, "job-state").text

    find(By.CSS_SELECTOR, '#tabs [data-tab="library"]').click()
    search = find(By.ID, "search")
    search.send_keys(title.split()[-1])
    # Read the list in one script call: the library re-renders while it refreshes, so elements found in one call
    # can be stale by the next (seen under load).
    library = """return [...document.querySelectorAll('#library li.song')].map(li => ({
        title: li.querySelector('.title').textContent, text: li.innerText,
        play: !!li.querySelector('button.play'), links: [...li.querySelectorAll('.actions a')].map(a => a.href)}))"""

    def only_our_song():  # the search narrows the list to this song (the unfiltered list may show first)
        items = browser.execute_script(library)
        return len(items) == 1 and items[0]["title"] == title and "done" in items[0]["text"] and items[0]

    item = wait_until(only_our_song, 30, "the song alone and done in the searched library")
    assert item["play"]
    links = item["links"]
    assert any("format=mp3" in link for link in links) and any(link.endswith("/codes") for link in links)

    if os.environ.get("HEARTMULA_SCREENSHOT"):  # the README's picture: `HEARTMULA_SCREENSHOT=docs/server.png`
        search.clear()
        find(By.CSS_SELECTOR, '#tabs [data-tab="compose"]').click()
        browser.save_screenshot(os.environ["HEARTMULA_SCREENSHOT"])

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def seed_for_a_long_song(model_root, prompts, seconds: float) -> int:
    """A random-weight model ends songs at random (EOS): find a seed whose song outlasts `seconds`, so there is
    time to move a slider. Streams equal one-shot generation with the same seed, so the generator can tell."""
    import torch

    from heartmula.lm.generation import SamplingParams, SongRequest, frames_for_duration
    from heartmula.lm.pretrained import load_generator

    generator = load_generator(model_root)
    frames = frames_for_duration(seconds)
    seeds = range(32)  # one batched call: every song has its own random stream, as if generated alone
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only fight the server process for the cores
    try:
        codes = generator.generate([SongRequest(tags=prompts, seed=s) for s in seeds], SamplingParams(),
                                   max_new_frames=frames)
    finally:
        torch.set_num_threads(threads)
    long = [seed for seed, song in zip(seeds, codes) if song.shape[-1] > frames]
    assert long, "no seed in 0..31 gives a long enough song with this model"
    return long[0]


def test_live_stream_with_a_slider_change(live_server, browser, model_root):
    from selenium.webdriver.common.by import By

    seed = seed_for_a_long_song(model_root, [("pop,piano", 0.7), ("electronic", 0.3)], 6.0)  # the page's mix
    browser.get(live_server.url + "/")
    find = browser.find_element
    wait_until(lambda: "model ready" in find(By.ID, "server-status").text, 60, "the model to be ready")
    find(By.ID, "seed").send_keys(str(seed))
    find(By.CSS_SELECTOR, '#tabs [data-tab="live"]').click()
    assert find(By.ID, "live").is_displayed() and not find(By.ID, "live-unavailable").is_displayed()
    seconds = find(By.ID, "live-seconds")
    seconds.clear()
    seconds.send_keys("8")
    find(By.ID, "stream-start").click()
    wait_until(lambda: find(By.ID, "stream-state").text.startswith("streaming"), 60, "the stream to start")
    # Audio is scheduled on a running AudioContext ahead of its clock.
    wait_until(lambda: browser.execute_script("return live.context.state === 'running' && live.next > "
                                              "live.context.currentTime"), 30, "scheduled audio")
    browser.execute_script("""
        const slider = document.querySelectorAll('.style-row .style-weight')[1];
        slider.value = 0.9;
        slider.dispatchEvent(new Event('input'));
    """)
    wait_until(lambda: "style change" in find(By.ID, "stream-state").text, 30, "the slider change to apply")
    wait_until(lambda: find(By.ID, "stream-state").text.startswith("done"), 60, "the stream to end")
    assert "saved in the library" in find(By.ID, "stream-state").text
    find(By.CSS_SELECTOR, '#tabs [data-tab="library"]').click()
    # Read the titles in one script call: the library list re-renders while it refreshes (stale elements).
    titles = "return [...document.querySelectorAll('#library .title')].map(e => e.textContent)"
    wait_until(lambda: any(t.startswith("live:") for t in browser.execute_script(titles)), 30,
               "the live song in the library")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def test_with_a_token_media_and_downloads_work_without_the_token_in_any_url(server_factory, browser):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    token = "browser-" + uuid.uuid4().hex
    server = server_factory("--token", token).start()
    bearer = {"Authorization": f"Bearer {token}"}
    job = httpx.post(f"{server.url}/api/songs", json={"tags": "pop", "duration": 1.0, "seed": 5, "title": "Tokened"},
                     headers=bearer).json()
    browser.get(server.url + "/")
    find = browser.find_element
    wait_until(lambda: find(By.ID, "token-box").is_displayed(), 60, "the token box")
    find(By.ID, "token").send_keys(token + Keys.TAB)
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#library li.song"), 60, "the library")
    fetch = """const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then(r => done(r.status), e => done(String(e)));"""
    wait_until(lambda: httpx.get(f"{server.url}/api/songs/{job['id']}", headers=bearer).json()["status"] == "done",
               120, "the song")
    assert browser.execute_async_script(fetch, f"/api/songs/{job['id']}/audio") == 200  # the session cookie
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: out of the page's reach
    links = browser.execute_script("return [...document.querySelectorAll('a, audio')].map(e => e.href || e.src)")
    assert not any(token in (link or "") for link in links)


def test_extend_a_library_song(live_server, browser):
    import io

    import httpx
    import numpy as np
    from selenium.webdriver.common.by import By

    api = live_server.url + "/api/songs"
    title = f"Source {uuid.uuid4().hex[:6]}"
    source = httpx.post(api, json={"lyrics": "[verse]\nla la la", "tags": "jazz", "duration": 2.0, "seed": 11,
                                   "title": title}).json()
    source = wait_until(lambda: (j := httpx.get(f"{api}/{source['id']}").json())["status"] == "done" and j, 120,
                        "the song to extend")
    browser.get_log("browser")  # drained: what earlier tests' pages logged is not this page's
    browser.get(live_server.url + "/")
    find = browser.find_element
    wait_until(lambda: "model ready" in find(By.ID, "server-status").text, 60, "the model to be ready")
    find(By.CSS_SELECTOR, '#tabs [data-tab="library"]').click()
    find(By.ID, "search").send_keys(title.split()[-1])
    # One script call finds and clicks: the library re-renders while it refreshes (stale elements).
    click = f"""const b = document.querySelector('#library li[data-id="{source['id']}"] button.extend');
        if (b) b.click(); return !!b;"""
    wait_until(lambda: browser.execute_script(click), 30, "the Extend button of the song")

    assert find(By.ID, "tab-compose").is_displayed() and find(By.ID, "extend-box").is_displayed()
    assert find(By.ID, "extend-title").text == title
    assert find(By.ID, "lyrics").get_property("value") == "[verse]\nla la la"
    assert find(By.ID, "tags").get_property("value") == "jazz"
    kept = float(find(By.ID, "from-seconds").get_property("value"))
    assert kept == pytest.approx(source["result"]["frames"] * 0.08)  # the whole song by default
    assert find(By.ID, "create").text == "Extend song"
    duration = find(By.ID, "duration")
    duration.clear()
    duration.send_keys("1")
    create = find(By.ID, "create")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", create)  # clear of the player bar
    create.click()
    wait_until(lambda: "done" in find(By.ID, "job-state").text, 120, "the extended song")
    assert not find(By.ID, "extend-box").is_displayed() and find(By.ID, "create").text == "Create song"

    songs = httpx.get(api, params={"limit": 500}).json()["songs"]
    extended = next(s for s in songs if s["request"].get("continue_from") == source["id"])
    assert extended["status"] == "done" and extended["title"] == f"{title} (continued from {kept:g} s)"
    codes = [np.load(io.BytesIO(httpx.get(f"{api}/{job['id']}/codes").content)) for job in (source, extended)]
    frames = source["result"]["frames"]
    assert extended["result"]["prompt_frames"] == frames and np.array_equal(codes[1][:, :frames], codes[0])
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
