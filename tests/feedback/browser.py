"""A scripted annotator on the labeling page (Playwright on Debian's chromium), shared by the browser tests."""

import shutil
from collections.abc import Callable

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def label_one(page, n: int, better: Callable[[list[str]], int], rationale: str | None = None) -> tuple:
    """Answer the showing on screen (the n-th, from 0) for the side ``better([left, right])`` picks
    (0 or 1); returns (left, right, choice, chosen, rejected, rationale) as the page showed them."""
    # polling by interval: requestAnimationFrame, the default, is throttled in a page not in front
    page.wait_for_function(f"document.getElementById('progress').textContent.startsWith('{n} / ')", polling=100,
                           timeout=120_000)
    total = int(page.locator("#progress").inner_text().split(" / ")[1])
    left, right = page.locator(".response .text").all_inner_texts()
    pick = better([left, right])
    if rationale is not None:  # mouse, then a typed rationale submitted with Ctrl+Enter
        page.locator(f"button[data-choice='{'A>B' if pick == 0 else 'B>A'}']").click()
        page.fill("#rationale", rationale)
        page.press("#rationale", "Control+Enter")
        choice = "A>B" if pick == 0 else "B>A"
    else:  # keyboard shortcuts only
        page.keyboard.press("1" if pick == 0 else "5")
        page.keyboard.press("Enter")
        choice = "A>>B" if pick == 0 else "B>>A"
    done = "document.getElementById('done').offsetParent !== null" if n == total - 1 else \
        f"document.getElementById('progress').textContent === '{n + 1} / {total}'"
    page.wait_for_function(done, polling=100, timeout=120_000)  # through retries while a replica is replaced
    return left, right, choice, [left, right][pick], [left, right][1 - pick], rationale


def showings(page) -> int:
    """How many showings the page will ask for in all (pairs and their swapped repeats)."""
    page.wait_for_function("document.getElementById('progress').textContent.includes(' / ')", polling=100,
                           timeout=120_000)
    return int(page.locator("#progress").inner_text().split(" / ")[1])
