"""The conformance checks as a pytest plugin, so a lab puts its chip into its own CI:

    pytest --pcmlab-resource TCPIP0::chip.mylab.org::5025::SOCKET --pcmlab-cells 0:1024

One test item per rule (``pcmlab-check[limits]``, ...), the names of
``protocols.conformance_rules``; a failed rule fails its item with the figure, and so does
a rule the checks left without a result. Without ``--pcmlab-resource`` one item is
collected and skipped. Registered under the ``pytest11`` entry point by the pcmlab package.
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pcmlab", "pcmlab chip conformance")
    group.addoption("--pcmlab-resource", metavar="RESOURCE", default=None,
                    help="run pcmlab's conformance checks on this chip (any driver resource)")
    group.addoption("--pcmlab-cells", metavar="START:STOP", default="0:1024",
                    help="the cells the checks may overwrite (default 0:1024)")


class CheckItem(pytest.Item):
    """One conformance rule on the chip given by --pcmlab-resource."""

    def __init__(self, *, rule: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rule = rule

    def runtest(self) -> None:
        resource = self.config.getoption("pcmlab_resource")
        if resource is None:
            pytest.skip("no --pcmlab-resource given: the chip conformance checks are skipped")
        results = _results(self.config, resource)
        result = results.get(self.rule)
        if result is None:  # a rule without a result was not checked: never a pass or skip
            raise CheckFailedError(f"{self.rule}: the checks reported no result for this "
                                   "rule")
        if result.status == "fail":
            raise CheckFailedError(f"{result.title}: {result.figure} ({result.meaning})")
        if result.status == "skip":
            pytest.skip(result.figure)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        if isinstance(excinfo.value, CheckFailedError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[str, int | None, str]:
        return "pcmlab-check", None, f"pcmlab-check[{self.rule}]"


class CheckFailedError(Exception):
    """A conformance rule the chip breaks."""


def _results(config: pytest.Config, resource: str) -> dict[str, Any]:
    """Run every check once per session (lazily, at the first item)."""
    cached = getattr(config, "_pcmlab_check_results", None)
    if cached is None:
        from drivers import open_driver
        from protocols.conformance import check_chip, parse_cells

        driver = open_driver(resource)
        cells = parse_cells(config.getoption("pcmlab_cells"), driver.info.n_cells)
        cached = {r.rule: r for r in check_chip(driver, cells, resource=resource)}
        config._pcmlab_check_results = cached  # type: ignore[attr-defined]
    return cached


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    resource = config.getoption("pcmlab_resource")
    if resource is None:
        items.append(CheckItem.from_parent(session, name="pcmlab-check", rule="-"))
        return
    from drivers.plugins import resolve
    from protocols.conformance_rules import rules_for

    rules = rules_for(resolve(resource).name)
    items.extend(CheckItem.from_parent(session, name=f"pcmlab-check[{r}]", rule=r)
                 for r in rules)
