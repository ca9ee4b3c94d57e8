"""Prometheus metrics in the text exposition format, without a client library."""

from __future__ import annotations

import threading
from collections.abc import Iterable


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + body + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metric:
    def __init__(self, name: str, help: str, kind: str) -> None:
        self.name, self.help, self.kind = name, help, kind
        self._values: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[tuple(sorted(labels.items()))] = value

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(tuple(sorted(labels.items())), 0.0)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        with self._lock:
            items = sorted(self._values.items())
        if not items and self.kind == "counter":
            items = [((), 0.0)]
        for key, value in items:
            v = int(value) if float(value).is_integer() else value
            lines.append(f"{self.name}{_labels(dict(key))} {v}")
        return "\n".join(lines) + "\n"


class Registry:
    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def gauge(self, name: str, help: str) -> Metric:
        m = Metric(name, help, "gauge")
        self.metrics.append(m)
        return m

    def counter(self, name: str, help: str) -> Metric:
        m = Metric(name, help, "counter")
        self.metrics.append(m)
        return m

    def render(self, extra: Iterable[Metric] = ()) -> str:
        return "".join(m.render() for m in [*self.metrics, *extra])
