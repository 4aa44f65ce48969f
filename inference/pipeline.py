"""The CephTrace v4 two-stage pipeline (shared/spec/cephtrace-v4.md) on ONNX Runtime.

    image -> canonical pose (face left) -> 512 x 512 working grid
          -> 0A profile net -> 0B profile geometry, zone boxes
          -> 0C zone nets -> contours -> 0D Douglas-Peucker + anchor rules
          -> 0E MLP -> 25 Gaussian attention maps
          -> Stage 1 heatmap net -> DARK decoding
          -> (optional, pack.json "refinement") landmark refiner at twice the resolution
          -> original pose and pixel size

Sessions are created once per Pipeline and reused; run() may be called from several
threads at once (ONNX Runtime sessions are thread-safe; buffers are per call or per thread).
"""
from __future__ import annotations

import dataclasses
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import structlog

from cephnode.inference import contract
from cephnode.inference.anchors import find_anchors, work_px_per_mm
from cephnode.inference.decode import decode_heatmaps
from cephnode.inference.geometry import WORK, from_work, heat_to_work
from cephnode.inference.imageio import Normalised, WorkImage, normalise_input, thumbnail, work_image
from cephnode.domain.landmarks import CANONICAL_25, INDEX, confidence_level
from cephnode.inference.orientation import Hypothesis, inverse_points, pose_from_patient_orientation, rank_hypotheses
from cephnode.inference.pack import ModelPack, load_pack
from cephnode.inference.priors import anchor_vector, attention_maps, derived_points
from cephnode.inference.quality import credibility, judge
from cephnode.inference import refine as refiner
from cephnode.inference.profile import StageFailure, analyse_profile, profile_mask, zone_boxes
from cephnode.domain.result import InferenceResult, Landmark, Orientation, Stage0Diagnostics
from cephnode.inference.sessions import ModelSessions
from cephnode.inference.zones import PRIMARY, band_midline, run_zones

log = structlog.get_logger("cephnode.inference")

PROFILE_OVERWRITES = ("UL", "LL", "Sn", "Pog_soft", "Pm")
RULE_SOURCES = ("0B", "0D", "0E")     # a stated rule naming one of these phases can be evaluated
NET_KEYS = {"profile": "net_0A", "z1": "net_0C", "z2": "net_0C", "z3": "net_0C", "z4": "net_0C",
            "phase0e": "net_0E", "stage1": "net_stage1", "refiner": "net_refine"}


class _Timer:
    """Wall time per phase. 'net_*' entries are the ONNX Runtime share inside a phase (so the
    rest of the phase is our own code); they are parts of the phases, not added to the total."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        # CPU time of the calling thread: phases minus the networks' calling-thread share is
        # exactly our own code's CPU cost, whatever else competes for the cores.
        self.cpu_phases = 0.0
        self.cpu_nets = 0.0

    def add(self, name: str, ms: float) -> None:
        self.ms[name] = self.ms.get(name, 0.0) + ms

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3
            self.cpu_phases += (time.thread_time() - c0) * 1e3


@dataclass
class _Candidates:
    """One validated input and the (pose, polarity) hypotheses to trace it in, best first."""
    name: str
    norm: Normalised
    hypotheses: list[Hypothesis]
    source: str                     # "given", "dicom" or "image"
    margin: float                   # detector margin (inf when the pose was not detected)
    spacing: tuple[float, float] | None
    timer: _Timer


# Pose verification (see Pipeline._conclude and docs/inference.md), calibrated by
# bench/bench_pose.py: detector margins on test1 and its device-shift variants are >= 0.58
# where the detector is right; the misses had 0.04-1.72, and their tracings were not credible.
MARGIN_SURE = 1.0          # a detector margin below this is verified even if the tracing looks fine
CREDIBLE = 0.45            # inference.quality.credibility at or above: a tracing one can believe
MAX_HYPOTHESES = 6         # at most this many (pose, polarity) hypotheses are traced per image
CLEARLY_BETTER = 0.2       # an incredible tracing replaces the first only when this much better


@dataclass
class _Prepared:
    """One image on the working grid, in the canonical pose, with its Stage 0 outcome."""
    name: str
    work: WorkImage
    pose: tuple[int, bool]
    orientation: Orientation
    canon_grey: np.ndarray
    canon_rgb: np.ndarray | None
    pixel_spacing_mm: tuple[float, float] | None
    timer: _Timer
    norm: Normalised | None = None          # the validated full-size input (for the refiner)
    inverted: bool = False
    prior_points: np.ndarray = field(default_factory=lambda: np.full((25, 2), np.nan))   # 512 grid
    rule_points: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    diag: Stage0Diagnostics | None = None


class Pipeline:
    def __init__(self, pack: ModelPack, sessions: ModelSessions):
        self.pack = pack
        self.sessions = sessions
        # Trace other poses when the first looks wrong (_conclude). Needs a pack whose Stage 1
        # confidences mean something: off only to test pose bookkeeping with stand-in packs.
        self.verify_pose = True
        # Stage 1 input buffers, one per thread: a fresh 29 MB array per image costs more in
        # page faults than filling it does.
        self._local = threading.local()
        # Test-time augmentation: Stage 1 also sees the input shifted by these (dx, dy) 512-grid
        # pixels and the heatmaps, shifted back, are averaged (the pack says which it was
        # validated with; see docs/model-pack.md). Empty: one pass.
        self.test_time_shifts: tuple[tuple[int, int], ...] = pack.test_time_shifts
        # The landmark refiner (inference.refine) when the pack has one; None: Stage 1's points.
        self.refinement = pack.refinement
        self._refine_channels = np.array(
            [self.refinement.landmarks.index(n) if (self.refinement and n in self.refinement.landmarks
                                                    and n in pack.predicted and n not in pack.rules) else -1
             for n in CANONICAL_25])

    @classmethod
    def load(cls, models_dir: Path | str | None = None, *, device: str = "auto",
             threads: int | None = None, io_binding: str = "auto") -> "Pipeline":
        """``io_binding``: "auto" binds on CUDA/TensorRT only; "always"/"never" force it."""
        pack = load_pack(models_dir)
        sessions = ModelSessions(pack, device=device, threads=threads, io_binding=io_binding)
        log.info("pipeline_loaded", pack=pack.name, version=pack.version, root=str(pack.root),
                 providers=sorted({p[0] for p in sessions.providers.values()}),
                 io_binding=sorted({t.device for t in sessions.bound.values()}) or None,
                 gpu_note=sessions.gpu_unavailable_reason or None)
        return cls(pack, sessions)

    def set_refine_weight(self, weight: float) -> None:
        """Use the pack's refiner at another weight (0: Stage 1's points as they are), e.g. to
        choose the weight on the validation split or to switch refinement off at a site."""
        if self.refinement is None:
            if weight:
                raise ValueError(f"{self.pack.root}: this pack has no landmark refiner")
            return
        self.refinement = None if weight == 0 else dataclasses.replace(self.refinement, weight=float(weight))

    @property
    def providers(self) -> dict[str, list[str]]:
        return self.sessions.providers

    # ---- public API ------------------------------------------------------------------------

    def run(self, image: np.ndarray, *, pixel_spacing_mm: tuple[float, float] | None = None,
            patient_orientation: tuple[str, str] | None = None, name: str = "",
            orientation: tuple[int, bool] | None = None) -> InferenceResult:
        """Trace one image. ``orientation`` (k, flip) forces a pose (e.g. known from elsewhere):
        it is then neither verified nor changed. The result carries its quality verdict (qc)."""
        cand = self._candidates(image, pixel_spacing_mm, patient_orientation, name, orientation)
        prep = self._prepare(cand, cand.hypotheses[0], cand.timer)
        self._stage0(prep)
        heat = self._stage1([prep])
        return self._conclude(cand, self._finish(prep, heat[0]))

    def warm_up(self) -> float:
        """Trace a blank film once, in a given pose, so that ONNX Runtime's first-run set-up of
        every session (memory planning, kernel choice; ~0.5-0.7 s on the 2-core host) is paid
        here and not by the first real image. Returns the milliseconds it took."""
        t0 = time.perf_counter()
        # the steps of run() without its verdict and logs: a blank film fails Stage 0 (that is
        # expected here, not news for the log), and Stage 1 and the refiner still run
        cand = self._candidates(np.full((640, 512), 128, np.uint8), None, None, "warm-up", (0, False))
        prep = self._prepare(cand, cand.hypotheses[0], cand.timer)
        self._stage0(prep)
        self._finish(prep, self._stage1([prep])[0])
        return (time.perf_counter() - t0) * 1e3

    def batches_stage1(self) -> bool:
        """Whether run_batch gives Stage 1 several images in one call by default: when the
        model's batch axis is dynamic and Stage 1 runs on an accelerator. On the CPU one batch
        measured no faster than image by image (bench/bench_batch.py: the same CPU time per
        image, more wall time on a loaded host) while it holds every input at once, so there
        the images go one by one."""
        key = contract.STAGE1.key
        on_cpu = self.sessions.providers[key][0] == "CPUExecutionProvider"
        return self.sessions.io[key].dynamic_batch and not on_cpu

    def run_batch(self, items: Sequence[dict], *, batch_stage1: bool | None = None) -> list[InferenceResult]:
        """Several images; Stage 1 runs as one batch when `batch_stage1` (default:
        batches_stage1()) and the model's batch axis is dynamic; the results are those of
        single runs. Pose verification, where an image needs it, runs image by image afterwards."""
        if batch_stage1 is None:
            batch_stage1 = self.batches_stage1()
        preps, cands = [], []
        for item in items:
            kw = dict(item)
            image = kw.pop("image")
            cand = self._candidates(image, kw.get("pixel_spacing_mm"), kw.get("patient_orientation"),
                                    kw.get("name", ""), kw.get("orientation"))
            prep = self._prepare(cand, cand.hypotheses[0], cand.timer)
            self._stage0(prep)
            preps.append(prep)
            cands.append(cand)
        if not preps:
            return []
        if batch_stage1 and self.sessions.io[contract.STAGE1.key].dynamic_batch and len(preps) > 1:
            results = []
            for start in range(0, len(preps), 8):          # bound the input tensor (8 x 29 MB)
                chunk = preps[start:start + 8]
                x = self._stage1_input(chunk)
                t0 = time.perf_counter()
                heat = self._with_test_time_shifts(x, self.sessions.run(contract.STAGE1.key, x))
                share = (time.perf_counter() - t0) * 1e3 / len(chunk)
                for i, prep in enumerate(chunk):
                    prep.timer.ms["stage1"] = share
                    prep.timer.ms["net_stage1"] = share
                    results.append(self._finish(prep, heat[i]))
            return [self._conclude(c, r) for c, r in zip(cands, results)]
        out = []
        for prep, cand in zip(preps, cands):
            heat = self._stage1([prep])
            out.append(self._conclude(cand, self._finish(prep, heat[0])))
        return out

    # ---- pose verification -----------------------------------------------------------------

    def _trace(self, cand: "_Candidates", hyp: Hypothesis) -> InferenceResult:
        prep = self._prepare(cand, hyp, _Timer())
        self._stage0(prep)
        return self._finish(prep, self._stage1([prep])[0])

    def _conclude(self, cand: "_Candidates", first: InferenceResult) -> InferenceResult:
        """Verify the pose where needed, then judge the result.

        The first hypothesis stands when it was given, or when the detector was sure (or the
        DICOM tag said so) and its tracing is credible. Otherwise the next hypotheses, in the
        detector's order, are traced as well (at most MAX_HYPOTHESES) and the most credible
        tracing is kept (if none is credible, the first stands unless another is clearly
        better); the search stops once a credible tracing has been compared with at least one
        other. Wrong poses collapse Stage 1's confidences (test1: mean >= 0.50 in the right
        pose, 0.01-0.35 in a wrong one) and their anatomy, so the comparison is not close."""
        result, o = first, first.orientation
        if cand.source != "given" and self.verify_pose:
            c_first = credibility(first)
            unsure = cand.source == "image" and cand.margin < MARGIN_SURE
            if unsure or c_first < CREDIBLE:
                t0 = time.perf_counter()
                best, best_c, tried = first, c_first, 1
                for hyp in cand.hypotheses[1:MAX_HYPOTHESES]:
                    r = self._trace(cand, hyp)
                    tried += 1
                    c = credibility(r)
                    if c > best_c:
                        best, best_c = r, c
                    if best_c >= CREDIBLE:
                        break
                if best_c < CREDIBLE and best_c - c_first < CLEARLY_BETTER:
                    # nothing credible and nothing clearly better: no evidence against the first
                    # choice (the gate will judge it); a film that is not a ceph ends here too
                    best, best_c = first, c_first
                spent = (time.perf_counter() - t0) * 1e3
                result = best
                o = result.orientation
                o.verification = "confirmed" if best is first else "overturned"
                o.hypotheses_tried = tried
                # the time of the traces not returned, on top of the returned one's own
                extra = spent - (0.0 if best is first else best.timings_ms["total"])
                if best is not first:
                    extra += first.timings_ms["total"]
                    result.timings_ms = {**{k: v for k, v in first.timings_ms.items()
                                            if k in ("read_file", "prepare", "orient")}, **result.timings_ms}
                result.timings_ms["pose_verification"] = round(extra, 3)
                result.timings_ms["total"] = round(result.timings_ms["total"] + extra, 3)
                log.info("pose_verified", image=cand.name, outcome=o.verification, tried=tried,
                         pose=[o.rotation_k, o.flipped, o.inverted], credibility=round(best_c, 3),
                         first_credibility=round(c_first, 3), ms=round(spent, 1))
        if result.degraded:
            log.warning("stage0_failed", image=cand.name, phase=result.stage0.failed_phase,
                        reason=result.stage0.reason)
        result.qc = judge(result)
        return result

    # ---- steps -----------------------------------------------------------------------------

    def _candidates(self, image, spacing, patient_orientation, name, forced) -> "_Candidates":
        """Validate the input once and order the (pose, polarity) hypotheses to try."""
        timer = _Timer()
        with timer.phase("prepare"):
            norm = normalise_input(image)
        margin = float("inf")
        with timer.phase("orient"):
            if forced is not None:
                hyps, source = [(int(forced[0]) % 4, bool(forced[1]), False)], "given"
            else:
                ranked = rank_hypotheses(thumbnail(norm), cropped_64=True)
                hyps = [h for h, _ in ranked]
                pose = pose_from_patient_orientation(patient_orientation)
                if pose is not None:
                    source = "dicom"           # the tag's pose first, either polarity; then the rest
                    first = [(pose[0], pose[1], inv) for inv in (False, True)]
                    hyps = first + [h for h in hyps if h not in first]
                else:
                    source = "image"
                    margin = ranked[0][1] - ranked[1][1]
        spacing_t = tuple(float(v) for v in spacing) if spacing is not None else None
        return _Candidates(name, norm, hyps, source, margin, spacing_t, timer)

    def _prepare(self, cand: "_Candidates", hyp: Hypothesis, timer: _Timer) -> _Prepared:
        k, flip, inverted = hyp
        with timer.phase("prepare"):
            work = work_image(cand.norm, (k, flip))        # canonical pose, 512 x 512
            if inverted:
                work.grey = 1.0 - work.grey
                if work.rgb is not None:
                    work.rgb = 1.0 - work.rgb
        margin = None if cand.margin == float("inf") else round(cand.margin, 3)
        return _Prepared(cand.name, work, (k, flip), Orientation(k, flip, cand.source, inverted, margin),
                         work.grey, work.rgb, cand.spacing, timer, norm=cand.norm, inverted=inverted)

    def _net(self, prep: _Prepared, key: str, x: np.ndarray) -> np.ndarray:
        t0, c0 = time.perf_counter(), time.thread_time()
        out = self.sessions.run(key, x)
        prep.timer.add(NET_KEYS[key], (time.perf_counter() - t0) * 1e3)
        prep.timer.cpu_nets += (time.thread_time() - c0) * 1e3
        return out

    def _stage0(self, prep: _Prepared) -> None:
        """Phases 0A-0E. A phase that cannot produce its output (or raises) marks Stage 0 failed
        with its name and reason; later phases still run where they can (their contours and
        anchors are useful diagnostics), but Stage 1 then gets zeroed attention maps."""
        t = prep.timer
        failed: list[tuple[str, str]] = []

        def fail(phase: str, exc: BaseException | str) -> None:
            if isinstance(exc, BaseException) and not isinstance(exc, StageFailure):
                log.warning("stage0_error", image=prep.name, phase=phase, error=repr(exc), exc_info=True)
                exc = f"{type(exc).__name__}: {exc}"
            failed.append((phase, str(exc.reason if isinstance(exc, StageFailure) else exc)))

        mask = np.zeros((WORK, WORK), bool)
        profile = None
        contours: dict[str, np.ndarray] = {}
        lines: dict[str, np.ndarray] = {}
        anchors: dict[str, np.ndarray] = {}
        simplified: dict[str, np.ndarray] = {}
        prof_pts: dict[str, np.ndarray] = {}
        with t.phase("0A"):
            try:
                mask = profile_mask(self._net(prep, contract.PROFILE.key, prep.canon_grey[None, None]))
            except Exception as exc:
                fail("0A", exc)
        with t.phase("0B"):
            if not failed:
                try:
                    profile = analyse_profile(mask)
                except StageFailure as exc:
                    failed.append((exc.phase, exc.reason))
                except Exception as exc:
                    fail("0B", exc)
            boxes = zone_boxes(profile)              # fallback boxes when 0A/0B failed
            if profile is not None:
                prof_pts = {k: np.array(v) for k, v in profile.points.items()}
        with t.phase("0C"):
            try:
                contours, _src = run_zones(prep.canon_grey, boxes, lambda k, x: self._net(prep, k, x))
                if not any(c in contours for c in PRIMARY):
                    failed.append(("0C", "no primary contour found (cranial base, mandibular border, "
                                         "palatal plane, symphysis)"))
            except Exception as exc:
                fail("0C", exc)
        with t.phase("0D"):
            try:
                lines = {c: band_midline(p) for c, p in contours.items()}
                px_mm = work_px_per_mm(prep.work.width, prep.work.height, prep.pixel_spacing_mm)
                anchors, simplified = find_anchors(lines, prof_pts.get("Prn"), px_mm, prof_pts.get("Pog_soft"))
                if "Prn" in prof_pts:
                    anchors["Prn"] = prof_pts["Prn"]
                if contours and len(anchors) <= 1:
                    failed.append(("0D", "no anchor could be placed on the traced contours"))
            except Exception as exc:
                fail("0D", exc)
        points = np.full((25, 2), np.nan)
        with t.phase("0E"):
            if not failed:
                try:
                    mlp = self._net(prep, contract.PHASE0E.key, anchor_vector(anchors))
                    if not np.isfinite(mlp).all():
                        failed.append(("0E", "anchor MLP returned non-finite values"))
                    else:
                        for n, p in derived_points(mlp).items():
                            points[INDEX[n]] = p
                        for n, p in anchors.items():
                            points[INDEX[n]] = p
                        for n in PROFILE_OVERWRITES:
                            if n in prof_pts:
                                points[INDEX[n]] = prof_pts[n]
                except Exception as exc:
                    fail("0E", exc)
            if failed:
                points[:] = np.nan          # zeroed attention: Stage 1 runs without priors
        first_failure = failed[0] if failed else None
        prep.prior_points = points
        prep.rule_points = {"0B": prof_pts, "0D": anchors,
                            "0E": {n: points[INDEX[n]] for n in CANONICAL_25 if np.isfinite(points[INDEX[n]]).all()}}
        with t.phase("diagnostics"):
            prep.diag = Stage0Diagnostics(
                ok=first_failure is None,
                failed_phase=first_failure[0] if first_failure else None,
                reason=first_failure[1] if first_failure else None,
                profile_pixels=profile.pixels if profile else int(mask.sum()),
                anchors={n: self._to_original_tuple(prep, anchors.get(n)) for n in ("S", "N", "Me", "ANS", "Go", "Pog", "Prn")},
                zone_boxes={k: tuple(int(v) for v in b) for k, b in boxes.items()},
                contours={c: [tuple(p) for p in self._to_original(prep, simplified.get(c, p)).round(2).tolist()]
                          for c, p in lines.items()},
                profile=([tuple(p) for p in self._to_original(
                    prep, np.stack([profile.xs_smooth, profile.ys], 1)[::4]).round(2).tolist()] if profile else []),
            )

    def _stage1(self, preps: Sequence[_Prepared]) -> np.ndarray:
        """Stage 1 heatmaps (B, 25, 256, 256) for prepared images, one pass per test-time shift."""
        x = self._stage1_input(preps)
        with preps[0].timer.phase("stage1"):
            return self._with_test_time_shifts(x, self._net(preps[0], contract.STAGE1.key, x), preps[0])

    def _with_test_time_shifts(self, x: np.ndarray, heat: np.ndarray, timed: _Prepared | None = None) -> np.ndarray:
        """Average `heat` with the heatmaps of `x` shifted by each test-time shift (zero fill,
        as training's affine warps fill), each moved back by half the shift (256 grid)."""
        if not self.test_time_shifts:
            return heat
        acc = np.array(heat, np.float32, copy=True)
        moved = np.empty_like(x)
        for dx, dy in self.test_time_shifts:
            _shift_into(moved, x, dx, dy)
            out = self._net(timed, contract.STAGE1.key, moved) if timed else self.sessions.run(contract.STAGE1.key, moved)
            acc += _shifted(out, -dx // 2, -dy // 2)
        acc /= 1 + len(self.test_time_shifts)
        return acc

    def _stage1_input(self, preps: Sequence[_Prepared]) -> np.ndarray:
        buf = getattr(self._local, "stage1_input", None)
        if buf is None or buf.shape[0] < len(preps):
            buf = np.empty((len(preps), 28, WORK, WORK), np.float32)
            self._local.stage1_input = buf
        x = buf[:len(preps)]
        for i, prep in enumerate(preps):
            with prep.timer.phase("attention"):
                if prep.canon_rgb is not None:
                    x[i, :3] = prep.canon_rgb.transpose(2, 0, 1)
                else:
                    x[i, :3] = prep.canon_grey           # broadcast grey to R, G, B
                attention_maps(prep.prior_points, out=x[i, 3:])
        return x

    def _to_original(self, prep: _Prepared, pts_work: np.ndarray) -> np.ndarray:
        """(N, 2) canonical 512-grid points -> original image pixels."""
        pts = np.asarray(pts_work, np.float64).reshape(-1, 2)
        w, h = prep.work.width, prep.work.height
        cw, ch = (h, w) if prep.pose[0] % 2 else (w, h)          # the turned image's size
        return inverse_points(from_work(pts, cw, ch), w, h, *prep.pose)

    def _to_original_tuple(self, prep: _Prepared, p) -> tuple[float, float] | None:
        if p is None or not np.isfinite(p).all():
            return None
        q = self._to_original(prep, p)[0]
        return (round(float(q[0]), 2), round(float(q[1]), 2))

    def _rule_point(self, prep: _Prepared, name: str) -> tuple[np.ndarray | None, str]:
        rule = self.pack.rules[name]
        for phase in RULE_SOURCES:
            if phase in rule:
                p = prep.rule_points.get(phase, {}).get(name)
                if p is not None:
                    return p, rule
        return None, rule

    def _finish(self, prep: _Prepared, heat: np.ndarray) -> InferenceResult:
        t = prep.timer
        with t.phase("decode"):
            xy_heat, peaks = decode_heatmaps(heat)
        xy_work = heat_to_work(xy_heat)
        if self.refinement is not None and prep.norm is not None:
            with t.phase("refine"):
                xy_work = self._refine(prep, xy_work)
        with t.phase("map_back"):
            xy = self._to_original(prep, xy_work)
            landmarks = []
            for i, n in enumerate(CANONICAL_25):
                note = self.pack.note_for(n)
                if n in self.pack.rules:
                    p, rule = self._rule_point(prep, n)
                    if p is None:
                        landmarks.append(Landmark(n, None, None, 0.0, "unavailable", False,
                                                  f"rule '{rule}' found no position on this image"))
                    else:
                        q = self._to_original(prep, p)[0]
                        landmarks.append(Landmark(n, float(q[0]), float(q[1]), 0.0, "low", False, note))
                elif n not in self.pack.predicted:
                    landmarks.append(Landmark(n, None, None, 0.0, "unavailable", False, note))
                else:
                    c = float(np.clip(peaks[i], 0.0, 1.0))
                    landmarks.append(Landmark(n, float(xy[i, 0]), float(xy[i, 1]), c, confidence_level(c), True, note))
        diag = prep.diag
        degraded = not diag.ok
        total = sum(v for k, v in t.ms.items() if not k.startswith("net_"))
        network = sum(v for k, v in t.ms.items() if k.startswith("net_"))
        timings = {k: round(v, 3) for k, v in t.ms.items()}
        timings["networks"] = round(network, 3)
        timings["outside_networks"] = round(total - network, 3)
        timings["outside_networks_cpu"] = round(t.cpu_phases - t.cpu_nets, 3)
        timings["total"] = round(total, 3)
        return InferenceResult(
            image_name=prep.name, width=prep.work.width, height=prep.work.height, landmarks=landmarks,
            stage0=diag, orientation=prep.orientation, degraded=degraded, timings_ms=timings,
            providers=dict(self.providers), pack_name=self.pack.name, pack_version=self.pack.version,
            pixel_spacing_mm=prep.pixel_spacing_mm,
        )

    def _refine(self, prep: _Prepared, xy_work: np.ndarray) -> np.ndarray:
        """Stage 1's 512-grid points moved toward the refiner's, as far as the pack's weight says."""
        r = self.refinement
        grid = refiner.grid_image(prep.norm, prep.pose, prep.inverted)
        out = refiner.refine(lambda x: self._net(prep, contract.REFINER.key, x), grid, xy_work,
                             self._refine_channels, min_peak=r.min_peak, max_move_px=r.max_move_px)
        return xy_work + r.weight * (out.points - xy_work)


def _shift_into(out: np.ndarray, x: np.ndarray, dx: int, dy: int) -> None:
    """out[..., y + dy, x + dx] = x[..., y, x] on the last two axes; uncovered pixels are 0."""
    out.fill(0.0)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]


def _shifted(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.empty_like(x)
    _shift_into(out, x, dx, dy)
    return out
