"""Make docs/demo.png, the README's picture of the demo, from a model trained on real photos by the README's commands.

    python docs/demo_screenshot.py --real_photos ../shared/real-photos   # about 6 minutes on 2 CPU cores

1. ``python -m yoga82 prepare`` the real photos (a Yoga-82 release layout) into ``data/real-photos``, unless done;
2. ``python train.py --dataset_name data/real-photos --label_level all --recipe few-photos --seed 0`` (vit-pico,
   batches of 32, 120 epochs) into ``runs/real-photos-all``, unless done;
3. ``python app.py --model runs/real-photos-all`` on a free port, an example photo uploaded in headless Chromium
   (Debian's ``chromium`` and ``chromium-driver``), "About this model" opened, and the page saved as the picture.

The example photo comes from another collection than the training photos (examples/README.md); the script checks
that no training image looks like it (the smallest mean difference of 32 x 32 grey thumbnails) before it shoots.
Re-running it with the same arguments trains the same model (seed 0) and takes the same picture.
"""

from __future__ import annotations

import argparse
import runpy
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # app.py, run below, imports the project's modules from the clone
TRAIN_FLAGS = ["--label_level", "all", "--recipe", "few-photos", "--seed", "0"]


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def thumbnail(image: Image.Image) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(image).convert("L").resize((32, 32)), dtype=np.float32) / 255


def nearest_training_image(photo: Path, data: Path) -> float:
    """The smallest mean absolute difference between the photo's thumbnail and any training image's (0: the same
    picture; unrelated photos differ by about 0.15 to 0.3)."""
    import datasets

    train = datasets.load_dataset(str(data), split="train")
    target = thumbnail(Image.open(photo))
    return min(float(np.abs(thumbnail(row["image"]) - target).mean()) for row in train)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shoot(model: Path, photo: Path, output: Path) -> str:
    """Serve ``model``, upload ``photo``, open the model's details and save the page; returns the headline."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        sys.exit("error: this needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver).")
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", str(model), "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1500", "--hide-scrollbars"):
        options.add_argument(flag)
    browser = None
    try:
        url = f"http://127.0.0.1:{port}/"
        runpy.run_path(str(ROOT / "app.py"))["wait_until_served"](url, server)
        browser = webdriver.Chrome(service=Service(driver), options=options)
        browser.get(url)
        WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(photo.resolve()))
        WebDriverWait(browser, 60).until(lambda b: "%" in b.find_element(By.ID, "headline").text)
        browser.find_element(By.CSS_SELECTOR, "#model-info button").click()  # open "About this model"
        time.sleep(2)  # the overlay image and the accordion's animation
        browser.execute_script("window.scrollTo(0, 0)")
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1280, min(int(height) + 20, 2400))  # the whole page, footer included
        time.sleep(1)
        output.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(output))
        return browser.find_element(By.ID, "headline").text
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real_photos", type=Path, default=ROOT.parent / "shared" / "real-photos",
                        help="a Yoga-82 release folder of real photos (images/, yoga_train.txt, yoga_test.txt)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "real-photos")
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "real-photos-all")
    parser.add_argument("--photo", type=Path, default=ROOT / "examples" / "downward_dog.jpg")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "demo.png")
    args = parser.parse_args(argv)
    if not (args.data / "README.md").is_file():
        run([sys.executable, "-m", "yoga82", "prepare", "--release_dir", str(args.real_photos), "--images_dir",
             str(args.real_photos / "images"), "--output_dir", str(args.data)])
    if not (args.model / "all_results.json").is_file():
        run([sys.executable, "train.py", "--dataset_name", str(args.data), *TRAIN_FLAGS, "--output_dir",
             str(args.model), "--overwrite_output_dir"])
    distance = nearest_training_image(args.photo, args.data)
    if distance < 0.05:
        sys.exit(f"error: {args.photo} looks like a training image (difference {distance:.3f}); choose another.")
    print(f"{args.photo.name}: nearest training image differs by {distance:.3f} (not one of them)")
    print("headline:", shoot(args.model, args.photo, args.output).replace("\n", " "))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
