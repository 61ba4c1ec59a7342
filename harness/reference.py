"""The metric and method references, rendered as Markdown from the registries.

The registries hold each metric's settings, direction, needs and citation and each method's
parameters and citation; ``METRIC_REFERENCE`` holds what they do not: the value range, the cost,
the reference code and every known difference from peers and from the papers' code. The docs
site (``docs/hooks.py``) and ``harness list metrics --format md`` render the same text from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from harness.methods import get_method
from harness.methods._core import METHODS
from harness.metrics.registry import METRICS, Metric

__all__ = ["MetricReference", "METRIC_REFERENCE", "missing_metric_references",
           "metric_reference_markdown", "method_reference_markdown"]


@dataclass(frozen=True)
class MetricReference:
    """What the metric registry does not hold about a metric.

    ``value_range``: the per-image value's range at the defaults; ``cost``: model (or method)
    calls per image at the defaults, in words; ``code``: the reference code followed or compared
    with (repository and file); ``differences``: every known difference from peers and from the
    papers' code; ``columns``: the table columns where they are not the metric's name or the
    registry's ``column_directions`` (empty: derived from the registry).
    """

    value_range: str
    cost: str
    code: str
    differences: tuple[str, ...] = ()
    columns: str = ""


_CURVE_COST = ("ceil(H W / step) + 1 forward passes (225 at 224 x 224, step 224), scored "
               "`batch_size` at a time")
_CURVE_CODE = "eclique/RISE `evaluation.py` (`CausalMetric`)"
_CURVE_DIFFERENCES = (
    "Ties in the saliency order go to the lower flat index (a stable sort); Quantus' "
    "`PixelFlipping` / `RegionPerturbation` use `np.argsort`, not stable, so their curves differ "
    "wherever tied pixels are split by a step.",
    "AUC is the trapezoid on [0, 1]: (sum(curve) - curve[0]/2 - curve[-1]/2) / (len(curve) - 1); "
    "Quantus' `np.trapz(dx=1)` is unnormalised.",
    "`rise_blur` is RISE's `conv2d(x, gkern(11, 5), padding=5)` (zero padding, a nearly flat "
    "kernel), not torchvision's `GaussianBlur(11, 5)`.",
)
_NEIGHBOURHOOD_COST = ("`n_samples` (50) method calls per image on perturbed inputs; the four "
                       "robustness entries with the same neighbourhood share one pass")
_BATCH_NOTE = (
    "An image's deltas come from its own generator, so its value does not depend on its batch in "
    "exact arithmetic; in floating point a map computed in a batch of other inputs can differ "
    "from the same map computed alone (CPU kernels choose their summation order by batch shape). "
    "Measured for `vanilla` on EfficientNet-Lite0 (4 sample photos, a batch of 4 against each "
    "alone, 2 CPU cores, torch 2.14.1): up to 5.6e-7 of the map's norm. Differences up to about "
    "1% of a gradient map's norm on Lite0 (per-sample quotients moved by up to 2.3e-4) have been "
    "reported for other batch compositions: values are independent of `batch_size` to that "
    "precision, not bit for bit.")
_ROBUSTNESS_COMMON = (
    "The radius is in [0, 1] pixel units by default (the reference's loader has only "
    "`ToTensor()`): channel c gets radius / std_c in the model's input (about 4.4x the input-space "
    "ball for ImageNet's std); `radius_units: input` is Captum's and Quantus' convention.",
    "phi is the map the method returns (`[H, W]`); the reference measures the raw signed "
    "attribution of all channels.",
    _BATCH_NOTE,
)
_MASK_COST = "none: maps against ground-truth masks, no model call"
_MAP_COST = "none: a function of the map alone"


METRIC_REFERENCE: dict[str, MetricReference] = {
    "deletion": MetricReference(
        "[0, 1] with `score: prob` (AUC of the target's softmax probability); any real with "
        "`score: logit`. Lower is better: a faithful map removes the evidence first.",
        _CURVE_COST, _CURVE_CODE, _CURVE_DIFFERENCES),
    "insertion": MetricReference(
        "[0, 1] with `score: prob`; any real with `score: logit`. Higher is better: a faithful "
        "map restores the evidence first.",
        _CURVE_COST, _CURVE_CODE, _CURVE_DIFFERENCES),
    "morf": MetricReference(
        "[0, 1] with `score: prob`. Lower is better (most relevant first).",
        _CURVE_COST, "none published with the paper (Samek et al. 2017); compared with Quantus "
        "0.6 `RegionPerturbation` and `PixelFlipping`", _CURVE_DIFFERENCES),
    "lerf": MetricReference(
        "[0, 1] with `score: prob`. Higher is better (least relevant first).",
        _CURVE_COST, "none published with the paper (Samek et al. 2017); compared with Quantus "
        "0.6 `RegionPerturbation`", _CURVE_DIFFERENCES),
    "abpc": MetricReference(
        "[-1, 1] with `score: prob`: AUC(LeRF) - AUC(MoRF). Higher is better.",
        "twice a curve: 2 (ceil(H W / step) + 1) forward passes (450 at 224 x 224, step 224)",
        "none used: the definition of Schulz et al. 2020 on the MoRF/LeRF engine",
        _CURVE_DIFFERENCES),
    "road": MetricReference(
        "`road_morf` and `road_lerf` in [0, 1] (accuracy, or mean probability with "
        "`score: prob`); `road_combined` in [-0.5, 0.5].",
        "per order, one forward pass per percentage (7) on imputed images, plus one noisy "
        "linear imputation (a sparse solve) per percentage",
        "tleemann/road_evaluation `road/imputations.py`, `NoRetrainingMethod.py`",
        (
            "Follows the reference code where the paper's text differs: the tie-break map "
            "`1e-4 N(0, 1)` is fresh for every percentage and order (seeded per (seed, order, "
            "percentage)); the removal count is `int()` of the floating-point H W p.",
            "The reference's `run_road` passes `prediction=None` and so scores class 0's "
            "probability; ours scores the explained class (pass the clean top-1 as target to "
            "follow the reference's intent).",
            "Imputation runs on the normalised model input with noise 0.01 / std per channel, "
            "the same numbers as the reference's pixel-space imputation (a test).",
            "pytorch-grad-cam (`ROADMostRelevantFirstAverage`, `ROADCombined`): `np.percentile` "
            "thresholds without scaling or tie-break, percentiles 10-90, noise in normalised "
            "units, scores the change from the clean image (a logit unless given a softmax "
            "target); its per-order averages differ from our `score: prob` values by the clean "
            "score, its `ROADCombined` does not.",
            "Quantus `ROAD`: MoRF only, percentages 1, 3, ..., 99, ranks the raw map, scores "
            "correctness only, and on RGB inputs ranks the C H W broadcast values, not pixels.",
            "`road_combined` pairs MoRF at p with LeRF at 1 - p (equal removed fractions): with "
            "the reference's 7 percentages over {0.1, 0.3, 0.5, 0.7, 0.9}.",
        ),
        columns="`road_morf` ↓, `road_lerf` ↑, `road_combined` ↑ (with both orders)"),
    "infidelity": MetricReference(
        "[0, inf). Lower is better.",
        "Gaussian (default): 10000 forward passes (+1); `square`: one per square (481,885 for "
        "sides 1..10 on 224 x 224), or `n_perturbations`",
        "chihkuanyeh/saliency_evaluation `infid_sen_utils.py` (`get_exp_infid`, "
        "`set_zero_infid`, `get_imageset`)",
        (
            "Units: the perturbation is drawn in [0, 1] pixel units as the reference draws it, "
            "I_pix = clip(p - b + 0.2 z, p - 1, p), and enters both terms in the model's input "
            "units, I = I_pix / std per channel: d = f(x) - f(x - I) and e = sum_hw phi_hw "
            "sum_c I_chw. (A formula with I_pix in e would scale e by std.)",
            "Optimal scaling as the reference: beta = mean(d e) / mean(e^2), value "
            "mean((d - beta e)^2); `scaling: false` is Captum's default. Scaled values over a "
            "sample of perturbations are biased low (beta is fitted on the draws it is scored "
            "on): compare at equal counts.",
            "At the reference's Gaussian defaults every perturbed image is noise around the "
            "baseline, so on ImageNet photos all non-negative maps score alike (about 0.006 on "
            "the sample photos) and the signed gradient scores 51-120; use `perturbation: "
            "square` to compare maps.",
            "The registry entry reads the method's signed map where it has one (`map: signed`).",
            "Quantus 0.6 `Infidelity`: the non-overlapping 4 x 4 blocks of a fixed grid "
            "(`perturb_patch_sizes=[4]`) in raster order, removed cumulatively into the image "
            "minimum, I^T phi = the map broadcast over channels times x - x', 10 samples "
            "(identical with its deterministic default baseline), softmax off, no scaling. "
            "Captum `infidelity`: a user `perturb_func`, attributions shaped like the input, 10 "
            "perturbations, no scaling by default (`normalize=True` is the reference's "
            "scaling).",
            "A zero map (mean(e^2) = 0) gets beta = 0 and the value mean(d^2), as Captum's "
            "`safe_div`; the reference divides 0 by 0.",
        )),
    "faithfulness_correlation": MetricReference(
        "[-1, 1] (Pearson r); undefined (NaN, with a status) for a constant map or a model "
        "blind to the subsets. Higher is better.",
        "`n_subsets` (100) forward passes (+1)",
        "Quantus `FaithfulnessCorrelation` (no authors' code published)",
        (
            "We remove whole pixels (all channels); Quantus draws single channel values of the "
            "broadcast map.",
            "Our `black` is pixel value 0; Quantus' `black` is the image minimum (ours: "
            "`baseline: min`).",
            "The registry entry reads the method's signed map where it has one.",
        )),
    "average_drop": MetricReference(
        "[0, 1] with `score: prob` (a fraction; the paper reports 100 x the mean); above 1 "
        "possible with `score: logit`. Lower is better.",
        "2 forward passes (the image and the map-weighted image)",
        "Grad-CAM++ paper (Chattopadhay et al. 2018); compared with pytorch-grad-cam "
        "`DropInConfidence`",
        (
            "pytorch-grad-cam's `DropInConfidence` does not divide by Y and multiplies the "
            "normalised tensor (masked pixels go to the mean colour, not black).",
        )),
    "increase_in_confidence": MetricReference(
        "{0, 1} per image; the mean is the fraction of images (the paper: 100 x). Higher is "
        "better.",
        "2 forward passes",
        "Grad-CAM++ paper; compared with pytorch-grad-cam `IncreaseInConfidence`",
        ("The map is min-max scaled and multiplies the image's pixels (deprocessed with the "
         "model's mean/std), as the paper; pytorch-grad-cam multiplies the normalised tensor.",)),
    "irof": MetricReference(
        "at most 1 (1 - the area under the relative-score curve); typically in [0, 1], below 0 "
        "when removing segments raises the score. Higher is better.",
        "K + 1 forward passes (K SLIC segments, about 100)",
        "Quantus `IROF` (`quantus/metrics/faithfulness/irof.py`, 0.6)",
        (
            "Segments are ordered by mean relevance with a stable sort on the float64 means "
            "(ties to the lower segment label), so segments whose means are equal in exact "
            "arithmetic but differ in the last bit (sums taken in another order) are ordered by "
            "those last bits, not by label; the means are not rounded before the sort.",
            "Quantus zero-pads curves to its batch's largest K: an image with fewer segments "
            "comes out lower by c_K / 2 and depends on its batch mates. `unnormalised` is "
            "Quantus' number for the images with the batch's largest K.",
            "Quantus segments the normalised tensor and fills with the mean of the whole, "
            "already perturbed batch; ours segments the image's pixels and fills with each "
            "image's own channel means.",
        )),
    "random_logit": MetricReference(
        "the similarity measure's range: [-1, 1] for `ssim` and the Spearman measures. Lower "
        "is better.",
        "one method call per image for the other class (the unit's maps are reused)",
        "Quantus `RandomLogit`",
        (
            "Quantus assumes 1000 classes, reseeds per batch (the other class depends on the "
            "image's batch position) and compares flattened maps with a 1-D SSIM; ours draws "
            "the other class per image from its id and compares 2-D maps.",
        )),
    "max_sensitivity": MetricReference(
        "[0, inf); inf (or undefined) for an all-zero clean map. Lower is better.",
        _NEIGHBOURHOOD_COST,
        "chihkuanyeh/saliency_evaluation `infid_sen_utils.py` (`get_exp_sens`, "
        "`sample_eps_Inf`, `config.py`)",
        (
            "Divides by ||phi(x)|| as the reference code does (`infid_sen_utils.py:308`); the "
            "paper's SENS_MAX has no denominator.",
            "Captum `sensitivity_max`: radius 0.02, 10 samples, divides by 1 where ||phi(x)|| = "
            "0. Quantus `MaxSensitivity`: the input-unit ball of 0.2, 200 samples.",
            *_ROBUSTNESS_COMMON,
        )),
    "avg_sensitivity": MetricReference(
        "[0, inf). Lower is better.",
        _NEIGHBOURHOOD_COST,
        "Quantus `AvgSensitivity` (Bhatt et al. published no code for it)",
        (
            "Quantus' variant of Bhatt et al.'s mu_A: every sample counts and the difference is "
            "divided by ||phi(x)||; Bhatt et al. average over samples with f(z) = f(x) only "
            "(`same_prediction: true`) and do not divide.",
            "Quantus `AvgSensitivity`: the input-unit ball of 0.2, 200 samples.",
            *_ROBUSTNESS_COMMON,
        )),
    "local_lipschitz_estimate": MetricReference(
        "[0, inf). Lower is better.",
        _NEIGHBOURHOOD_COST,
        "dmelis/robust_interpret `robust_interpret/explainers.py` "
        "(`local_lipschitz_estimate`); Quantus `LocalLipschitzEstimate`",
        (
            "A Monte-Carlo max over the sampled deltas (a lower bound of the maximum); the "
            "authors' code maximises with Bayesian optimisation (`optim='gp'`, 100 calls).",
            "The search box is not clipped to the data range: the authors' code clips its "
            "bounds to the dataset's (min, max) by default (`clip=True`); ours samples x' = "
            "x + delta unclipped, as the reference of the sensitivities does.",
            "`normalise: true` divides each map by its own max |value|; Quantus' "
            "`normalise_by_max` divides by the batch's max (a map's scale then depends on its "
            "batch mates). Quantus defaults: Gaussian noise sigma 0.1, 200 samples, normalised.",
            *_ROBUSTNESS_COMMON,
        )),
    "relative_input_stability": MetricReference(
        "[0, inf); undefined when no sample keeps the prediction. Lower is better.",
        _NEIGHBOURHOOD_COST + ", plus one forward pass per perturbed input (prediction check)",
        "the paper's definition (Agarwal et al. 2022); compared with Quantus "
        "`RelativeInputStability` and AI4LIFE-GROUP/OpenXAI `openxai/metrics.py` "
        "(`eval_relative_stability`)",
        (
            "Ours follows the paper: elementwise relative changes, "
            "||(e_x - e_x') / e_x||_p / max(||(x - x') / x||_p, eps_min), eps_min where an "
            "element is 0 (Quantus' guard).",
            "The authors' current OpenXAI code uses a ratio of norms instead: "
            "(||e_x - e_x'||_p / ||e_x||_p) / (||x - x'||_p / ||x||_p) "
            "(`compute_Lp_norm_diff(..., normalize_to_relative_change=True)` in "
            "`openxai/experiment_utils.py`), skips samples whose ratio is undefined and has no "
            "eps_min: its numbers differ from ours.",
            "Quantus `RelativeInputStability`: 200 samples of a one-sided shift from "
            "U[0.02, 0.2], and one sample that changes the prediction makes the whole image "
            "NaN; ours takes the max over the samples that keep it.",
            *_ROBUSTNESS_COMMON,
        )),
    "pointing_game": MetricReference(
        "{0, 1} per image (hit or miss); the column is the hit rate. Higher is better.",
        _MASK_COST,
        "TorchRay `torchray/benchmark/pointing_game.py`",
        (
            "Distances are in pixels of the maps' resolution; TorchRay resizes maps to the "
            "original image first.",
            "TorchRay's summary averages per-class accuracy over all classes of its dataset (an "
            "absent class counts 0); `pointing_game_summary` averages over the classes present.",
            "Quantus `PointingGame` has no tolerance and counts a hit if any tied maximum is in "
            "the mask; ours takes the first maximum in row-major order (TorchRay's argmax).",
        )),
    "relevance_mass_accuracy": MetricReference(
        "[0, 1]; undefined for a map without positive relevance. Higher is better.",
        _MASK_COST,
        "CLEVR-XAI evaluation code (gist ArrasL/0bc02ef98e369f861aec40145a58e356, linked "
        "from ahmedmagdiosman/clevr-xai `eval/README.md`: `evaluate_single`)",
        (
            "CLEVR-XAI pools the raw C-channel relevance into a non-negative map (`sum,abs`, "
            "`sum,pos`, `max-norm`, `l1-norm`, `l2-norm`, `l2-norm,sq`): most poolings use "
            "absolute relevance. Ours takes the method's map and clips negative values to 0 "
            "(the `sum,pos` reading); a method's default map (e.g. max over channels of "
            "|gradient|) corresponds to `max-norm`. On a signed map ours and `sum,abs` differ.",
            "Quantus `RelevanceMassAccuracy` does not clip negative relevance.",
        )),
    "relevance_rank_accuracy": MetricReference(
        "[0, 1]. Higher is better.",
        _MASK_COST,
        "CLEVR-XAI evaluation code (gist ArrasL/0bc02ef98e369f861aec40145a58e356, "
        "`evaluate_single`)",
        (
            "Ties: ours ranks tied pixels lower flat index first (a stable sort); CLEVR-XAI "
            "ranks with `np.argsort(...)[::-1]`, which puts tied pixels in reverse index order "
            "(higher flat index first, for a stable argsort) and Quantus with "
            "`np.argsort(-a)` (not stable). Maps with large tied regions (e.g. a CAM's zeros) "
            "can differ.",
            "CLEVR-XAI ranks its pooled, absolute relevance; ours ranks the method's map as "
            "returned.",
        )),
    "attribution_localisation": MetricReference(
        "[0, 1]; with `weighted: true` [0, H W / |mask|] (1 for a uniform map). Higher is "
        "better.",
        _MASK_COST,
        "Quantus `AttributionLocalisation` (no authors' code published)",
        (
            "`weighted: true` multiplies by H W / |mask| per image, as Quantus' older "
            "per-image code did (`size_data / size_bbox` with size_data the mask's H W).",
            "Quantus 0.6's batched `AttributionLocalisation(weighted=True)` multiplies by "
            "`size_bbox / x_batch[2:].size`: |mask| over the element count of the batch from "
            "its third image on, a factor that depends on the batch size and divides by zero "
            "for batches of 1 or 2. Not reproduced.",
            "Quantus also uses `abs=True`, divides by the batch's max |value|, adds 1e-9 to "
            "the denominator and returns NaN where mu > 1.",
        )),
    "top_k_intersection": MetricReference(
        "[0, 1]; with `concept_influence: true` up to H W / |mask|. Higher is better.",
        _MASK_COST,
        "Quantus `TopKIntersection`",
        ("Ties to the lower flat index (stable sort); Quantus' `argsort` is not stable.",)),
    "sparseness": MetricReference(
        "[0, (n - 1) / n], n = H W (0 for a constant map). Higher is better (sparser).",
        _MAP_COST,
        "jfc43/advex (the authors' code, as Quantus `Sparseness` follows it)",
        (
            "Ours is the exact Gini index of |map| per map. The authors' code adds 1e-7 to the "
            "raw values before the Gini, so its value depends on the map's scale (a faint map "
            "is pulled towards 0).",
            "Quantus divides by the batch's max |value| and then adds 1e-7, a shift relative "
            "to the batch's scale: a map's value depends on its batch mates.",
        )),
    "complexity": MetricReference(
        "[0, ln n], n = H W (ln n for a constant map); undefined for an all-zero map. Lower "
        "is better.",
        _MAP_COST,
        "Quantus `Complexity`",
        ("Quantus adds 1e-12 inside the log after its batch-wide normalisation.",)),
    "effective_complexity": MetricReference(
        "an integer in [0, H W]. Lower is better.",
        _MAP_COST,
        "Quantus `EffectiveComplexity`",
        (
            "Ours divides each map by its own max |value|; Quantus by the batch's max, so a "
            "faint map next to a strong one counts fewer pixels there (equal for a batch of "
            "one).",
        )),
    "model_randomization": MetricReference(
        "per measure: a similarity in [-1, 1] (Spearman, Pearson, SSIM, HOG-Spearman) after "
        "each randomized block. Lower is better (the map depends on the weights).",
        "one method call per image per randomized block (cascading: every block from the "
        "logits down; 19 for EfficientNet-Lite0, 10 for SqueezeNet 1.1)",
        "adebayoj/sanity_checks_saliency "
        "`notebooks/inceptionv3_cascading_randomization.ipynb`",
        (
            "`map_normalisation: reference` (default) reproduces the notebook's views and "
            "skimage 0.15's SSIM (data range 2.0, sample covariance) and HOG (3 x 3 cells per "
            "block); `method` measures the method's own map. Compare SSIM only under one "
            "convention.",
            "`target_mode: own_top1` (the paper); Quantus' choice is `fixed`.",
            "HOG's gradient differences are taken in float64 from the float32 view (skimage "
            "0.15: float32); differences below 1e-7 relative.",
        ),
        columns="`rand_<measure>` ↓ for each measure (the similarity after the last step)"),
    "smooth_mprt": MetricReference(
        "a rank (or Pearson) correlation in [-1, 1] between the noise-averaged maps of the model "
        "and of its fully randomized copy. Lower is better.",
        "n_samples (50) method calls per image per evaluated model: the original and each "
        "randomized step (cascading, bottom-up: every block; `skip_layers: true`: the fully "
        "randomized model only), `batch_size` noisy inputs per call",
        "Quantus 0.6 `metrics/randomisation/smooth_mprt.py` (`SmoothMPRT`); "
        "annahedstroem/sanity-checks-revisited",
        (
            "Noise: each image's draws are made once from the experiment's seed and the image id "
            "and shared by every model; Quantus draws new noise from numpy's global generator for "
            "every model (and reports an 'original' entry of two smoothings of the original "
            "model, which is 1 with common draws and is left out).",
            "Quantus smooths `quantus.explain`'s explanation whatever `explain_func` it is given; "
            "the harness smooths the method it is given.",
            "Layers: the model's blocks (a conv with its BatchNorm) are re-initialised, block k "
            "from seed `seed * 1000 + k` with the architecture's initialiser; Quantus resets every "
            "module with `reset_parameters` after `torch.manual_seed(seed + 1)`.",
            "Second-moment normalisation per map; Quantus normalises per batch (equal values for "
            "rank measures).",
            "The reference benchmark (`setup_estimators`) ran `skip_layers: true`, `abs: false` "
            "and Quantus' `ssim` on flattened maps; the defaults follow Quantus' class.",
        )),
    "efficient_mprt": MetricReference(
        "(H(e_random) - H(e)) / H(e) per image, a real number (0 for a map that ignores the "
        "model). Higher is better.",
        "two method calls per image (the original and the fully randomized model); "
        "`skip_layers: false` adds one per randomized block",
        "Quantus 0.6 `metrics/randomisation/efficient_mprt.py` (`EfficientMPRT`, "
        "`discrete_entropy`); annahedstroem/sanity-checks-revisited",
        (
            "Bin rules per map with n = H * W values; Quantus 0.6 computes them over the batch "
            "with n = a_batch[0].ndim (3: Sturges then gives 2 bins).",
            "Layers as `smooth_mprt` (the model's blocks, the architecture's initialiser).",
            "The notebook behind the published MNIST-LeNet table ran `abs=True` and second-moment "
            "normalisation, which give the same entropies as the defaults on those maps "
            "(docs/sanity_revisited.md reproduces its rows).",
        )),
    "input_invariance": MetricReference(
        "||a2 - a1||_2 / ||a1||_2 per image, >= 0 (0: invariant); records also carry `moved` "
        "(share of pixels not close) and `invariant` (Quantus' score). Lower is better.",
        "two method calls per image (the model at x and the shifted model at x + shift)",
        "Quantus 0.6 `metrics/axiomatic/input_invariance.py` (`InputInvariance`)",
        (
            "Quantus leaves flat element 0 of each image unshifted (`perturb_batch` passes "
            "`indices[i][1:]`); with that corrected its verdicts equal the harness's (tested).",
            "Quantus sets one bias per channel, 2 b - min(layer(m)), which does not absorb the "
            "shift where the first layer zero-pads; the harness subtracts the exact per-position "
            "term layer(m) - layer(0).",
            "Quantus takes `named_modules()[1]` as the first layer (a container for torchvision "
            "models, which fails); the harness traces the first layer the input reaches.",
            "Quantus' score is the binary `invariant`; the harness's value is the relative "
            "difference (scale-free), because in float32 an invariant method still moves a little "
            "(1e-4 to 1e-2 for the gradient on EfficientNet-Lite0; 0 in float64).",
        )),
}


def missing_metric_references() -> list[str]:
    """Registered metrics without an entry in ``METRIC_REFERENCE``, sorted.

    Returns:
        The names; empty when every registered metric is documented.
    """
    return sorted(name for name in METRICS if name not in METRIC_REFERENCE)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default_text(value: object) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value}`"


def _field_defaults(settings: type | None) -> list[tuple[str, object]]:
    if settings is None:
        return []
    out = []
    for spec in dataclasses.fields(settings):
        if spec.default is not dataclasses.MISSING:
            out.append((spec.name, spec.default))
        elif spec.default_factory is not dataclasses.MISSING:
            out.append((spec.name, spec.default_factory()))
        else:
            out.append((spec.name, None))
    return out


def _arrow(direction: str) -> str:
    return "↑" if direction == "up" else "↓"


def _columns(name: str, metric: Metric, entry: MetricReference | None) -> str:
    if entry is not None and entry.columns:
        return entry.columns
    if metric.column_directions:
        return ", ".join(f"`{c}` {_arrow(d)}" for c, d in metric.column_directions)
    return f"`{name}` {_arrow(metric.direction)}"


def _metric_section(name: str) -> list[str]:
    metric = METRICS[name]
    entry = METRIC_REFERENCE.get(name)
    better = "higher" if metric.direction == "up" else "lower"
    missing = "not documented (no `METRIC_REFERENCE` entry)"
    rows = [
        ("table columns", _columns(name, metric, entry)),
        ("direction", f"{_arrow(metric.direction)} {better} is better"),
        ("range", entry.value_range if entry else missing),
        ("needs", ", ".join(sorted(metric.needs))),
        ("cost per image", entry.cost if entry else missing),
        ("citation", metric.citation),
        ("reference code", entry.code if entry else missing),
    ]
    lines = [f"## `{name}`", "", _cell(metric.summary), "", "| | |", "|---|---|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in rows]
    lines += ["", "Settings (`metrics: {" + name + ": {...}}` in a config) and defaults:", ""]
    defaults = _field_defaults(metric.settings)
    if defaults:
        lines += ["| setting | default |", "|---|---|"]
        lines += [f"| `{key}` | {_cell(_default_text(value))} |" for key, value in defaults]
    else:
        lines.append("none.")
    lines += ["", "Known differences from peers and from the papers' code:", ""]
    differences = entry.differences if entry else ()
    lines += [f"- {text}" for text in differences] or ["- none known."]
    return lines + [""]


def metric_reference_markdown() -> str:
    """The metric reference: an overview table, then one section per registered metric.

    Returns:
        Markdown text (the docs page ``metrics.md`` and ``harness list metrics --format md``).
    """
    names = sorted(METRICS)
    lines = ["# Metric reference", "",
             "Generated from the metric registry (`harness.metrics.METRICS`) and "
             "`harness.reference.METRIC_REFERENCE`; `harness list metrics --format md` prints "
             "the same text. ↑: higher is better, ↓: lower is better.", "",
             "| metric | columns | needs | range |", "|---|---|---|---|"]
    for name in names:
        metric = METRICS[name]
        entry = METRIC_REFERENCE.get(name)
        value_range = entry.value_range.split(". ")[0] if entry else "not documented"
        lines.append(f"| [`{name}`](#{name}) | "
                     f"{_cell(_columns(name, metric, entry))} | "
                     f"{', '.join(sorted(metric.needs))} | {_cell(value_range)} |")
    lines.append("")
    for name in names:
        lines += _metric_section(name)
    return "\n".join(lines)


def method_reference_markdown() -> str:
    """The method reference: one section per registered method with its parameters.

    Returns:
        Markdown text (the docs page ``methods.md`` and ``harness list methods --format md``).
    """
    names = sorted(METHODS)
    lines = ["# Method reference", "",
             "Generated from the method registry (`harness.methods.METHODS`); `harness list "
             "methods --format md` prints the same text. The adapter families "
             "(`captum:<Class>`, `gradcam:<CAMClass>`) and plug-ins are described in "
             "[Evaluate your method](howto/method.md).", "",
             "| method | summary | signed variant |", "|---|---|---|"]
    for name in names:
        method = get_method(name)
        lines.append(f"| [`{name}`](#{name}) | {_cell(method.summary)} | "
                     f"{'yes' if method.signed else 'no'} |")
    lines.append("")
    for name in names:
        method = get_method(name)
        lines += [f"## `{name}`", "", _cell(method.summary), "",
                  f"Citation: {_cell(method.citation)}.", ""]
        params = _field_defaults(method.settings)
        if params:
            lines += ["| parameter | default |", "|---|---|"]
            lines += [f"| `{key}` | {_cell(_default_text(value))} |" for key, value in params]
        else:
            lines.append("Parameters: none.")
        if method.signed is not None:
            lines += ["", "Signed variant: `signed=True` (or `params: {signed: true}`)."]
        lines.append("")
    return "\n".join(lines)
