"""Energy and carbon with codecarbon (Schmidt et al.; Strubell et al. 2019 made the case for reporting it).

``OfflineEmissionsTracker`` never reaches for the network (the online ``EmissionsTracker`` looks up the
machine's location and the grid's carbon intensity): the country comes from the config. Where the CPU's
power counters (RAPL) cannot be read, codecarbon estimates CPU power from the processor's TDP and the
process's share of CPU time, and RAM power from its size; the method is recorded next to the figures, so an
estimate is never mistaken for a reading.

One tracker serves a whole run, each measured block a codecarbon *task* (``EnergyMeter.task``): the
tracker's hardware set-up (seconds) is paid once, not per block.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger("slimnlp")


@dataclass
class Energy:
    """What one block consumed: ``None`` when energy is off or codecarbon could not measure."""

    kwh: float | None = None
    co2_kg: float | None = None


class EnergyMeter:
    """A codecarbon offline tracker for one run; ``with meter.task("train") as energy: ...`` fills ``energy``."""

    def __init__(self, country_iso_code: str, enabled: bool = True, measure_power_secs: float = 15.0) -> None:
        self.method: str | None = None
        self._tracker = None
        if not enabled:
            return
        try:
            from codecarbon import OfflineEmissionsTracker

            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            self._tracker = OfflineEmissionsTracker(
                country_iso_code=country_iso_code,
                measure_power_secs=measure_power_secs,
                tracking_mode="process",  # this process's share, not the other jobs on the machine
                save_to_file=False,
                log_level="error",
            )
        except Exception as err:  # noqa: BLE001 - energy is a measurement, never a reason for a run to fail
            log.warning("energy not measured: codecarbon could not start (%s)", err)

    @contextlib.contextmanager
    def task(self, name: str) -> Iterator[Energy]:
        energy = Energy()
        started = False
        if self._tracker is not None:
            try:
                self._tracker.start_task(name)
                started = True
            except Exception as err:  # noqa: BLE001 - as in __init__
                log.warning("energy of %s not measured: codecarbon could not start the task (%s)", name, err)
        try:
            yield energy
        finally:
            if started:
                try:
                    data = self._tracker.stop_task()
                    energy.kwh, energy.co2_kg = float(data.energy_consumed), float(data.emissions)
                    self.method = self._cpu_method()
                except Exception as err:  # noqa: BLE001 - as in __init__
                    log.warning(
                        "energy of %s not measured: codecarbon could not stop the task (%s)", name, err
                    )

    def _cpu_method(self) -> str:
        """codecarbon's CPU power source: ``intel_rapl`` / ``apple_powermetrics`` (read) or ``cpu_load`` /
        ``constant`` (estimated from the TDP and the load)."""
        cpus = [h for h in getattr(self._tracker, "_hardware", []) if type(h).__name__ == "CPU"]
        return str(getattr(cpus[0], "_mode", "unknown")) if cpus else "unknown"
