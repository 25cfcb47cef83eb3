"""Energy and carbon with codecarbon (Schmidt et al.; Strubell et al. 2019 made the case for reporting it).

``OfflineEmissionsTracker`` never reaches for the network (the online ``EmissionsTracker`` looks up the
machine's location and the grid's carbon intensity): the country comes from the config. Where the CPU's
power counters (RAPL) cannot be read, codecarbon estimates CPU power from the processor's TDP and the
process's share of CPU time, and RAM power from its size; the method is recorded next to the figures, so an
estimate is never mistaken for a reading.
"""

from __future__ import annotations

import logging
from types import TracebackType

log = logging.getLogger("slimnlp")


class EnergyMeter:
    """Context manager: kWh and kg CO2-eq of the process while the block runs (``kwh``, ``co2_kg``; ``None``
    when disabled or when codecarbon could not measure)."""

    def __init__(self, country_iso_code: str, enabled: bool = True, measure_power_secs: float = 15.0) -> None:
        self.country_iso_code = country_iso_code
        self.enabled = enabled
        self.measure_power_secs = measure_power_secs
        self.kwh: float | None = None
        self.co2_kg: float | None = None
        self.method: str | None = None
        self._tracker = None

    def __enter__(self) -> EnergyMeter:  # noqa: PYI034 - Self needs Python 3.11
        if not self.enabled:
            return self
        try:
            from codecarbon import OfflineEmissionsTracker

            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            self._tracker = OfflineEmissionsTracker(
                country_iso_code=self.country_iso_code,
                measure_power_secs=self.measure_power_secs,
                tracking_mode="process",  # this process's share, not the other jobs on the machine
                save_to_file=False,
                log_level="error",
            )
            self._tracker.start()
        except Exception as err:  # noqa: BLE001 - energy is a measurement, never a reason for a run to fail
            log.warning("energy not measured: codecarbon could not start (%s)", err)
            self._tracker = None
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._tracker is None:
            return
        try:
            emissions = self._tracker.stop()
            data = self._tracker.final_emissions_data
            self.kwh, self.co2_kg = float(data.energy_consumed), float(emissions)
            # codecarbon's CPU power source: "intel_rapl" / "apple_powermetrics" (read) or "cpu_load" / "constant"
            # (estimated from the TDP and the load)
            cpus = [h for h in getattr(self._tracker, "_hardware", []) if type(h).__name__ == "CPU"]
            self.method = str(getattr(cpus[0], "_mode", "unknown")) if cpus else "unknown"
        except Exception as err:  # noqa: BLE001 - as in __enter__
            log.warning("energy not measured: codecarbon could not stop (%s)", err)
