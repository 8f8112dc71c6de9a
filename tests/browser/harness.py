"""What a browser test does to a page: check it with axe-core, sign a person in.

axe-core is vendored beside this file (vendor/axe-core/, recorded in vendor/VENDORED.json). It goes in by
`page.evaluate` of its source: the console's Content-Security-Policy (script-src 'self') refuses an inline
<script> such as `page.add_script_tag(content=...)` would add, while DevTools evaluation is not subject
to the page's CSP, so the page is checked under the very policy it ships with.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from playwright.async_api import Page

AXE_SOURCE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
BLOCKING_IMPACTS = frozenset({"serious", "critical"})


@cache
def axe_source() -> str:
    return AXE_SOURCE.read_text(encoding="utf-8")


async def axe(page: Page, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The page's axe-core violations of serious or critical impact (WCAG 2.x A/AA and best practices),
    outside the elements `exclude` selects (a third-party widget, named with its reason by the caller)."""
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(axe_source())
    violations: list[dict[str, Any]] = await page.evaluate(
        "async (exclude) => (await window.axe.run({include: [document], exclude: exclude.map(s => [s])},"
        " {resultTypes: ['violations']})).violations", list(exclude))
    return [v for v in violations if v.get("impact") in BLOCKING_IMPACTS]


def describe_violations(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']} [{v.get('helpUrl', '')}]")
        lines.extend(f"    at {node['target']}: {node.get('failureSummary', '').strip()}" for node in v["nodes"])
    return "\n".join(lines)


async def assert_accessible(page: Page, exclude: tuple[str, ...] = ()) -> None:
    violations = await axe(page, exclude)
    assert not violations, f"axe-core on {page.url}:\n{describe_violations(violations)}"


async def sign_in(page: Page, base_url: str, username: str, password: str) -> None:
    """Fill and send the console's sign-in form as a person would; returns on the page it leads to."""
    await page.goto(f"{base_url}/sign-in")
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", password)
    async with page.expect_navigation():
        await page.click("form[action='/sign-in'] button[type=submit]")


async def screenshot(page: Page, name: str) -> None:
    """With OMNISTOCK_SCREENSHOTS=folder, keep a full-page picture (the README's come from here:
    `OMNISTOCK_SCREENSHOTS=services/console/screenshots pytest tests/browser`)."""
    if folder := os.environ.get("OMNISTOCK_SCREENSHOTS"):
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)
