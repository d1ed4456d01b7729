"""Take docs/server.png: a server on a tiny random-weight model, a few songs, the page in headless chromium.

    python3 scripts/server_screenshot.py [--out docs/server.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "serve"))

from serve_helpers import ServerProcess  # noqa: E402

LYRICS = "[verse]\nWalking by the river in the morning light\nEvery stone remembers what we said last night\n\n" \
         "[chorus]\nHold on, hold on, the water carries on"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "server.png")
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from heartmula.codec.pretrained import write_random_codec
    from heartmula.lm.pretrained import write_random_root

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_random_root(tmp / "model", "tiny", seed=0)
        write_random_codec(tmp / "model" / "HeartCodec-oss", "tiny", seed=0)
        server = ServerProcess(tmp / "model", tmp / "data", tmp / "server.log").start()
        try:
            songs = [("Morning river", "folk,acoustic guitar,calm"), ("Neon rain", "electronic:0.7,jazz:0.3"),
                     ("Paper boats", "pop,piano,happy")]
            for title, tags in songs:
                httpx.post(server.url + "/api/songs", json={"title": title, "tags": tags, "lyrics": LYRICS,
                                                           "duration": 2.0, "seed": 1})
            time.sleep(1)
            options = webdriver.ChromeOptions()
            options.binary_location = "/usr/bin/chromium"
            for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1200",
                        "--hide-scrollbars", "--mute-audio", "--autoplay-policy=no-user-gesture-required"):
                options.add_argument(arg)
            driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
            try:
                driver.get(server.url + "/")
                time.sleep(2)
                driver.find_element(By.ID, "title").send_keys("Harbour lights")
                driver.find_element(By.ID, "lyrics").send_keys(LYRICS)
                driver.find_element(By.ID, "tags").send_keys("indie,female vocal,dreamy")
                driver.find_element(By.ID, "duration").clear()
                driver.find_element(By.ID, "duration").send_keys("3")
                driver.find_element(By.ID, "create").click()
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and not driver.execute_script(
                        "return document.getElementById('player').currentTime > 0"):
                    time.sleep(0.2)
                driver.execute_script("document.getElementById('player').pause()")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.out))
            finally:
                driver.quit()
        finally:
            server.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
