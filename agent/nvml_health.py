"""The memory-health and interconnect reads of a pass: ECC, row remapping or retired pages,
PCIe and NVLink, with the error counters batched into one nvmlDeviceGetFieldValues call where
the driver has the fields, and single calls where it does not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.nvml_pass import GpuLostError, NvmlErrors, NvmlPass, Slot, text, union_value
from gpuwarden_common.wire import EccCounts, NvLink, Pcie, RetiredPages, RowRemap

# (what, field name in pynvml, single-call fallback arguments are derived from "what")
_ECC_FIELDS: tuple[tuple[str, str], ...] = (
    ("volatile_corrected", "NVML_FI_DEV_ECC_SBE_VOL_TOTAL"),
    ("volatile_uncorrected", "NVML_FI_DEV_ECC_DBE_VOL_TOTAL"),
    ("aggregate_corrected", "NVML_FI_DEV_ECC_SBE_AGG_TOTAL"),
    ("aggregate_uncorrected", "NVML_FI_DEV_ECC_DBE_AGG_TOTAL"),
)
_PCIE_REPLAY_FIELD = "NVML_FI_DEV_PCIE_REPLAY_COUNTER"
# NVLink totals over all links, and the per-link counter to sum where the total is missing
_NVLINK_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("crc_flit", "NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", "NVML_NVLINK_ERROR_DL_CRC_FLIT"),
    ("crc_data", "NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", "NVML_NVLINK_ERROR_DL_CRC_DATA"),
    ("replay", "NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", "NVML_NVLINK_ERROR_DL_REPLAY"),
    ("recovery", "NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", "NVML_NVLINK_ERROR_DL_RECOVERY"),
)


class GpuHealthReader:
    """Per collector: the batched field ids to ask for, and the rules for reading them."""

    def __init__(self, nvml: Any, kinds: NvmlErrors) -> None:
        self.nvml = nvml
        self._kinds = kinds

    # -- batched field values ---------------------------------------------------------------

    def _wanted_fields(self) -> list[int]:
        names = [n for _, n in _ECC_FIELDS] + [_PCIE_REPLAY_FIELD]
        names += [n for _, n, _ in _NVLINK_FIELDS]
        return [v for v in (getattr(self.nvml, n, None) for n in names) if isinstance(v, int)]

    def fields(self, read: NvmlPass) -> dict[int, int | None]:
        """Field id -> value (None: failed, recorded). Absent ids fall back to single calls."""
        slot = read.slot
        wanted = [f for f in self._wanted_fields() if f not in slot.unsupported_fields]
        if not wanted:
            return {}
        values = read.call("field_values", "nvmlDeviceGetFieldValues", wanted)
        if values is None:
            return {}
        nvml = self.nvml
        out: dict[int, int | None] = {}
        for value in values:
            field_id, ret = int(value.fieldId), int(value.nvmlReturn)
            if ret == nvml.NVML_SUCCESS:
                out[field_id] = self._field_int(value)
            elif ret in (nvml.NVML_ERROR_NOT_SUPPORTED, nvml.NVML_ERROR_INVALID_ARGUMENT):
                slot.unsupported_fields.add(field_id)
            elif ret in (nvml.NVML_ERROR_GPU_IS_LOST, nvml.NVML_ERROR_RESET_REQUIRED):
                raise GpuLostError(f"field {field_id}", text(nvml.NVMLError(ret)))
            else:
                out[field_id] = None
                read.fail(f"field {field_id}", text(nvml.NVMLError(ret)))
        return out

    @staticmethod
    def _field_int(value: Any) -> int | None:
        number = union_value(value.value, int(value.valueType))
        return None if number is None else int(number)

    def _from_field(
        self, fields: dict[int, int | None], name: str, fallback: Callable[[], int | None]
    ) -> int | None:
        field_id = getattr(self.nvml, name, None)
        if field_id in fields:
            return fields[field_id]
        return fallback()

    # -- memory health ----------------------------------------------------------------------

    def ecc(self, read: NvmlPass, fields: dict[int, int | None]) -> EccCounts:
        nvml = self.nvml
        counts: dict[str, int | None] = {}
        for what, field_name in _ECC_FIELDS:
            scope, kind = what.split("_")
            error_type = (
                nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
                if kind == "corrected"
                else nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
            )
            counter = nvml.NVML_VOLATILE_ECC if scope == "volatile" else nvml.NVML_AGGREGATE_ECC

            def single(w: str = what, e: int = error_type, c: int = counter) -> int | None:
                return read.count(f"ecc.{w}", "nvmlDeviceGetTotalEccErrors", e, c)

            counts[what] = self._from_field(fields, field_name, single)
        return EccCounts(**counts)

    def memory_repair(self, read: NvmlPass) -> tuple[RowRemap | None, RetiredPages | None]:
        """Row remapping (Ampere and later) or, where the GPU has none, page retirement."""
        rows = read.call("row_remap", "nvmlDeviceGetRemappedRows")
        if rows is not None:
            correctable, uncorrectable, pending, failure = rows
            remap = RowRemap(
                correctable=int(correctable),
                uncorrectable=int(uncorrectable),
                pending=bool(pending),
                failure=bool(failure),
            )
            return remap, None
        if "row_remap" not in read.slot.unsupported:
            return None, None  # a read error, recorded: not a reason to switch mechanism
        nvml = self.nvml
        sbe = read.call(
            "retired_pages.sbe",
            "nvmlDeviceGetRetiredPages",
            nvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
        )
        dbe = read.call(
            "retired_pages.dbe",
            "nvmlDeviceGetRetiredPages",
            nvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,
        )
        pending = read.call("retired_pages.pending", "nvmlDeviceGetRetiredPagesPendingStatus")
        if sbe is None and dbe is None and pending is None:
            return None, None
        retired = RetiredPages(
            single_bit=len(sbe or ()),
            double_bit=len(dbe or ()),
            pending=pending == nvml.NVML_FEATURE_ENABLED,
        )
        return None, retired

    # -- interconnect -----------------------------------------------------------------------

    def pcie(self, read: NvmlPass, fields: dict[int, int | None]) -> Pcie:
        return Pcie(
            gen=read.count("pcie.gen", "nvmlDeviceGetCurrPcieLinkGeneration"),
            max_gen=read.count("pcie.max_gen", "nvmlDeviceGetMaxPcieLinkGeneration"),
            width=read.count("pcie.width", "nvmlDeviceGetCurrPcieLinkWidth"),
            max_width=read.count("pcie.max_width", "nvmlDeviceGetMaxPcieLinkWidth"),
            replay_count=self._from_field(
                fields,
                _PCIE_REPLAY_FIELD,
                lambda: read.call("pcie.replay_count", "nvmlDeviceGetPcieReplayCounter"),
            ),
        )

    def _links(self, read: NvmlPass) -> tuple[int, ...]:
        """The links this GPU has, probed once: absent ones answer NotSupported/InvalidArgument."""
        slot = read.slot
        if slot.nvlinks is not None:
            return slot.nvlinks
        count = int(getattr(self.nvml, "NVML_NVLINK_MAX_LINKS", 18))
        slot.nvlinks = tuple(link for link in range(count) if self._link_exists(slot, link))
        return slot.nvlinks

    def _link_exists(self, slot: Slot, link: int) -> bool:
        try:
            self.nvml.nvmlDeviceGetNvLinkState(slot.handle, link)
        except self._kinds.absent_link:
            return False
        except self._kinds.lost as exc:
            raise GpuLostError(f"nvlink{link}.state", text(exc)) from None
        except Exception:
            return True  # there, but unreadable now: the pass's own state read reports it
        return True

    def nvlink(self, read: NvmlPass, fields: dict[int, int | None]) -> NvLink:
        nvml = self.nvml
        links = self._links(read)
        if not links:
            return NvLink()
        answered = up = 0
        for link in links:
            state = read.call(f"nvlink{link}.state", "nvmlDeviceGetNvLinkState", link)
            if state is not None:
                # a link we could not read counts neither as up nor as down
                answered += 1
                up += int(state == nvml.NVML_FEATURE_ENABLED)
        totals: dict[str, int] = {}
        for what, field_name, counter_name in _NVLINK_FIELDS:
            counter = getattr(nvml, counter_name)

            def per_link(w: str = what, c: int = counter) -> int | None:
                found = [
                    read.count(f"nvlink{n}.{w}", "nvmlDeviceGetNvLinkErrorCounter", n, c)
                    for n in links
                ]
                return sum(v for v in found if v is not None)

            totals[what] = self._from_field(fields, field_name, per_link) or 0
        return NvLink(
            links_total=answered,
            links_up=up,
            crc_errors=totals["crc_flit"] + totals["crc_data"],
            replay_errors=totals["replay"],
            recovery_errors=totals["recovery"],
        )
