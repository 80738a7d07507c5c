"""Write the grt123 vs robust segmentation PNGs of this folder and print the per-scan figures.

Usage (from the repository root, the shared data beside it)::

    PYTHONPATH=$PWD python docs/figures/segment/make_segment_figures.py [OUT_DIR]

For LIDC-IDRI-0001 and the CIP COPDGene scan (ct-64): grt123's and the robust masks of the
unmodified scan and of the scan with the lesions of tests/test_segment_robust.py, outlined on
axial slices through the trachea, the carina, the hila and the diaphragm and on a coronal
slice through the carina: grt123 yellow, robust cyan, the removed airway red, the lesions
orange, CIP's airway label voxels still inside the robust mask magenta. The zoomed rows
centre on the airway (resp. on each slice's lesion).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nrrd  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "tests"))
from test_segment_robust import dice, run_case  # noqa: E402

from dsbprep.airways import find_airways  # noqa: E402
from dsbprep.dicom import load_scan  # noqa: E402


def outline(ax, mask, colour, width=1.0):
    if mask.any():
        ax.contour(mask.astype(float), [0.5], colors=[colour], linewidths=width)


def panel(ax, image, grt, rob, removed, extra, title, aspect):
    ax.imshow(image, cmap="gray", vmin=-1000, vmax=300, aspect=aspect, interpolation="nearest")
    if removed.any():
        rgba = np.zeros(removed.shape + (4,))
        rgba[removed] = (1, 0, 0, 0.45)
        ax.imshow(rgba, aspect=aspect, interpolation="nearest")
    outline(ax, grt, "yellow", 1.2)
    outline(ax, rob, "cyan", 0.9)
    for mask, colour in extra:
        outline(ax, mask, colour, 1.0)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def view(volume, axis, index):
    plane = np.take(volume, index, axis=axis)
    return plane[::-1] if axis != 0 else plane  # coronal: head up


def figure(path, scan, grt, rob, rows, extras=(), removed=None):
    """One PNG: ``rows`` of views (name, axis, index, crop or None: (rows, cols) slices)."""
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.4 * cols, 3.5 * len(rows)),
                             squeeze=False)
    rem = np.zeros(grt.shape, bool) if removed is None else removed
    for ax_row, views in zip(axes, rows, strict=True):
        for ax in ax_row[len(views):]:
            ax.axis("off")
        for ax, (name, axis, index, crop) in zip(ax_row, views, strict=False):
            aspect = scan.spacing[0] / scan.spacing[2] if axis else 1.0
            cut = (slice(None), slice(None)) if crop is None else crop
            ex = [(view(m, axis, index)[cut], c) for m, c in extras]
            panel(ax, view(scan.hu, axis, index)[cut], view(grt, axis, index)[cut],
                  view(rob, axis, index)[cut], view(rem, axis, index)[cut], ex,
                  f"{name} ({'zyx'[axis]}={index})", aspect)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print("wrote", path)


def zoom(scan, centre_yx, half_mm, axis=0, shape=None):
    """In-plane crop of half_mm around (y, x) for axial views, (z, x) rows/cols for coronal."""
    if axis == 0:
        hy, hx = (int(half_mm / s) for s in scan.spacing[1:])
        y, x = centre_yx
        return slice(max(0, y - hy), y + hy), slice(max(0, x - hx), x + hx)
    hz, hx = int(half_mm / scan.spacing[0]), int(half_mm / scan.spacing[2])
    z, x = centre_yx  # z in the flipped (head-up) view
    return slice(max(0, z - hz), z + hz), slice(max(0, x - hx), x + hx)


def scan_figures(name, scan, case, out, truth=None):
    grt, rob = case["grt123"], case["robust"]
    airway = find_airways(scan.hu, scan.spacing, grt.union)
    removed = grt.union & ~rob.union
    zs = np.flatnonzero(grt.union.any(axis=(1, 2)))
    pts = np.argwhere(airway)
    zc = int(pts[:, 0].min())  # the lowest airway slice found
    xs = airway.any(axis=1)
    width = np.array([np.ptp(np.flatnonzero(r)) if r.any() else 0 for r in xs]) * scan.spacing[2]
    carina = int(np.flatnonzero(width > 25.0).max())  # the airway spreads out below it
    yc = int(np.median(pts[pts[:, 0] == carina][:, 1]))
    dz = max(1, int(round(15 / scan.spacing[0])))
    levels = {"trachea": min(zs[-1], carina + 2 * dz), "upper hila": carina,
              "hila": max(zc, carina - dz), "lower hila": max(zc, carina - 3 * dz)}
    full = [(k, 0, z, None) for k, z in levels.items()]
    full += [("diaphragm", 0, int(zs[0] + dz), None), ("coronal", 1, yc, None)]
    zoomed = []
    for k in ("upper hila", "hila", "lower hila"):
        z = levels[k]
        centre = (int(np.median(pts[:, 1])), int(np.median(pts[:, 2])))
        zoomed.append((k + " (zoom)", 0, z, zoom(scan, centre, 60.0)))
    zoomed.append(("coronal (zoom)", 1, yc,
                   zoom(scan, (scan.hu.shape[0] - 1 - carina, int(np.median(pts[:, 2]))), 70.0, 1)))
    extras = [(truth["airway"] & rob.union, "magenta")] if truth else []
    normal = "normal_airways" if truth else "normal_hila_diaphragm"
    figure(out / f"{name}_{normal}.png", scan, grt.union, rob.union, [full, zoomed],
           extras, removed=removed)
    lesion = case["lesion"]
    zl = np.flatnonzero(lesion.any(axis=(1, 2)))
    picks = sorted(set(np.linspace(zl[0], zl[-1], 4).round().astype(int)))
    views = [("lesions", 0, int(z), None) for z in picks] + [
        ("coronal lesions", 1, int(np.median(np.argwhere(lesion)[:, 1])), None)]
    zoomed = [("lesions (zoom)", 0, int(z),
               zoom(scan, tuple(int(v) for v in np.median(np.argwhere(lesion[z]), axis=0)), 40.0))
              for z in picks]
    sick = dataclasses.replace(scan, hu=case["sick_hu"])
    figure(out / f"{name}_lesions.png", sick, case["grt123_sick"].union,
           case["robust_sick"].union, [views, zoomed], [(lesion, "orange")])


def numbers(name, case, truth=None):
    lesion, base = case["lesion"], case["grt123"].union
    row = {"scan": name}
    for m in ("grt123", "robust"):
        mask = case[f"{m}_sick"].union
        row[f"{m} lesion inside"] = np.count_nonzero(mask & lesion) / np.count_nonzero(lesion)
        row[f"{m} dice vs truth"] = dice(mask, base)
        if truth is not None:
            row[f"{m} dice vs wholeLung"] = dice(case[m].union, truth["whole"])
            row[f"{m} airway voxels"] = int(np.count_nonzero(case[m].union & truth["airway"]))
    rob = case["robust"]
    row["robust vs grt123 dice L/R"] = (dice(rob.left, case["grt123"].left),
                                        dice(rob.right, case["grt123"].right))
    row.update({k: round(float(rob.stages[k]), 1) for k in ("airway_ml", "airway_removed_ml",
                                                              "pathology_ml")})
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    scan = load_scan(DATA / "lidc-idri" / "LIDC-IDRI-0001")
    case = run_case(scan.hu, scan.spacing, scan.direction)
    numbers("LIDC-IDRI-0001", case)
    scan_figures("lidc", scan, case, out)
    folder = DATA / "cip-lung-nrrd" / "Testing" / "Data" / "Input"
    scan = load_scan(folder / "ct-64Dicom")
    whole, _ = nrrd.read(str(folder / "wholeLung-64.nrrd"))
    labels, _ = nrrd.read(str(folder / "lm-64.nrrd"))
    truth = {"whole": whole.transpose(2, 1, 0) > 0, "airway": (labels.transpose(2, 1, 0) >> 8) == 2}
    case = run_case(scan.hu, scan.spacing, scan.direction)
    numbers("CIP 10002K ct-64", case, truth)
    scan_figures("cip", scan, case, out, truth)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
