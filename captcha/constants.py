"""The one place for the project's fixed facts.

Everything else (generator, preprocessors, models, checkpoints, ONNX metadata, server) reads
these names; a trained model carries its own copy in its checkpoint so that later steps never
depend on these defaults.
"""

# Input size of the recognition models, (height, width), as in the course data.
INPUT_HEIGHT = 50
INPUT_WIDTH = 130
INPUT_SIZE = (INPUT_HEIGHT, INPUT_WIDTH)

# The size the default training recipe reads every image at, (height, width): about twice the
# course size, so that thin strokes survive the network's first downsampling; the widest the
# attention heads take (64 feature columns), and within the default recipe's training-time budget
# (docs/benchmarks.md, *Resolution*). The generator still draws at INPUT_SIZE.
READ_SIZE = (100, 253)

# Characters per CAPTCHA in the built-in generated set.
DEFAULT_LENGTH = 4

# The course data's 19-symbol alphabet (digits and lower-case letters that are hard to confuse).
DEFAULT_ALPHABET = "2345678bcdefgmnpwxy"

# Split sizes of the built-in generated set: train / val / test, as in the course data.
DEFAULT_SPLITS = (4000, 1000, 3000)

# Normalisation applied after preprocessing: x = (pixel / 255 - mean) / std, per channel.
NORM_MEAN = 0.5
NORM_STD = 0.5

# The largest model the project accepts by default (the course's requirement was < 1M).
DEFAULT_MAX_PARAMS = 1_000_000

# Where the built-in generated set is cached when `captcha train` gets no --data.
DEFAULT_DATA_DIRNAME = "captcha-generated"

# Image file endings the dataset reader accepts.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")

# Decoding refuses images with more pixels than this (decompression bombs) ...
MAX_IMAGE_PIXELS = 40_000_000

# ... and images whose decoder output (pixels x channels x bytes per sample, read from the header
# before decoding) is larger than this: every 8-bit image within the pixel limit fits, an image of
# deeper samples or more channels fits fewer pixels.
MAX_DECODED_BYTES = 160_000_000

# Image files larger than this are refused before reading (an encoded image is smaller than its
# decoded pixels but for metadata).
MAX_IMAGE_FILE_BYTES = 256 * 1024 * 1024

# The decoding threads of one server process hold at most about this much image memory at once
# (plus one image decoded alone): see `serving.engine`. Per process: `--processes N` holds N times it.
DECODE_BUDGET_BYTES = 256 * 1024 * 1024
