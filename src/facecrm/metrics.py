"""A small Prometheus text-format registry (counters, gauges, latency summaries)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Registry:
    _counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    _gauges: dict[str, Callable[[], float]] = field(default_factory=dict)
    _observations: dict[str, list[float]] = field(default_factory=dict)
    _help: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def inc(self, name: str, value: float = 1.0, help: str = "", **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + value
            self._help.setdefault(name, help)

    def gauge(self, name: str, read: Callable[[], float], help: str = "") -> None:
        with self._lock:
            self._gauges[name] = read
            self._help.setdefault(name, help)

    def observe(self, name: str, seconds: float, help: str = "") -> None:
        with self._lock:
            values = self._observations.setdefault(name, [])
            values.append(seconds)
            del values[:-2048]  # a sliding window for the quantiles
            self._help.setdefault(name, help)

    def counter(self, name: str, **labels: str) -> float:
        return self._counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            counters = dict(self._counters)
            gauges = dict(self._gauges)
            observations = {k: sorted(v) for k, v in self._observations.items()}
        for name in sorted({n for n, _ in counters}):
            lines += [f"# HELP {name} {self._help.get(name, '')}", f"# TYPE {name} counter"]
            for (n, labels), value in sorted(counters.items()):
                if n == name:
                    tag = ",".join(f'{k}="{v}"' for k, v in labels)
                    lines.append(f"{name}{{{tag}}} {value}" if tag else f"{name} {value}")
        for name, read in sorted(gauges.items()):
            lines += [
                f"# HELP {name} {self._help.get(name, '')}",
                f"# TYPE {name} gauge",
                f"{name} {read()}",
            ]
        for name, values in sorted(observations.items()):
            lines += [f"# HELP {name} {self._help.get(name, '')}", f"# TYPE {name} summary"]
            for q in (0.5, 0.95, 0.99):
                if values:
                    lines.append(f'{name}{{quantile="{q}"}} {values[int(q * (len(values) - 1))]}')
            lines += [f"{name}_count {len(values)}", f"{name}_sum {sum(values)}"]
        return "\n".join(lines) + "\n"
