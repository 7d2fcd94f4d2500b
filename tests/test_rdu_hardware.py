"""Chip specs: public numbers, derived quantities, assumptions and the registry."""

import dataclasses

import pytest

from rdu_xla_backend import hardware as hw


def test_sn40l_public_numbers():
    c = hw.SN40L
    assert c.peak_bf16_flops == 638e12
    assert (c.pcus, c.pmus) == (1040, 1040)
    assert c.sram_bytes_per_pmu == pytest.approx(0.5 * 2**20)  # 520 MiB / 1040
    assert c.hbm_bytes_per_s == 1.8e12 and c.ddr_bytes_per_s == 200e9
    assert c.pmu_addresses_per_cycle == 4


def test_derived_clock_consistent_with_public_bound():
    # Assumed lanes x stages must give a clock under SN40L's public "< 2 GHz".
    c = hw.SN40L
    assert 1e9 < c.clock_hz < 2e9
    peak = 2 * c.pcus * c.macs_per_pcu_per_cycle * c.clock_hz
    assert peak == pytest.approx(c.peak_bf16_flops)
    assert c.flops_per_pcu_per_cycle == pytest.approx(2 * c.macs_per_pcu_per_cycle)


def test_explicit_clock_overrides_derivation():
    c = dataclasses.replace(hw.SN40L, params=hw.ModelParameters(clock_hz=1.5e9))
    assert c.clock_hz == 1.5e9
    assert c.pmu_bytes_per_s == c.banks_per_pmu * c.params.bank_word_bytes * 1.5e9
    assert c.sram_bytes_per_s == pytest.approx(c.pmus * c.pmu_bytes_per_s)


def test_gpu_numbers_and_fractions():
    assert hw.A100_40GB.hbm_bytes_per_s == pytest.approx(1.555e12)
    assert hw.A100_80GB.hbm_bytes_per_s == pytest.approx(2.039e12)
    assert hw.H100.peak_bf16_flops == 989e12
    for g in (hw.A100_40GB, hw.A100_80GB, hw.H100):
        assert g.sector_bytes == 32
        assert g.achievable_flops < g.peak_bf16_flops
        assert g.achievable_hbm_bytes_per_s < g.hbm_bytes_per_s


def test_registry_and_names():
    assert hw.get_chip("sn40l") is hw.SN40L
    assert hw.get_chip("a100-40gb") is hw.A100_40GB
    assert hw.get_chip("a100") is hw.A100_80GB
    assert set(hw.CHIPS) == {"SN10", "SN30", "SN40L", "A100_40GB", "A100_80GB", "H100", "H200"}
    assert hw.get_chip("h200").hbm_bytes == 141e9 and hw.get_chip("h200").peak_bf16_flops == 989e12
    with pytest.raises(ValueError, match="SN40L"):
        hw.get_chip("tpu")


@pytest.mark.parametrize("name", sorted(hw.CHIPS))
def test_assumptions_name_every_non_public_value(name):
    chip = hw.CHIPS[name]
    lines = "\n".join(hw.assumptions(chip))
    for f in dataclasses.fields(chip.params):
        assert f.name in lines
    for field_name, _ in chip.assumed:
        assert field_name in lines
        assert hasattr(chip, field_name)
    if isinstance(chip, hw.ChipSpec):
        assert "clock_hz derived" in lines


def test_invalid_parameters_rejected():
    with pytest.raises(ValueError, match="banks_per_pmu"):
        hw.ModelParameters(banks_per_pmu=0)
    with pytest.raises(ValueError, match="fraction"):
        hw.GpuParameters(achievable_compute_fraction=1.5)


def test_backend_never_imports_sparsetrain():
    import ast
    import pathlib

    import rdu_xla_backend

    root = pathlib.Path(rdu_xla_backend.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "sparsetrain" for n in names), path
