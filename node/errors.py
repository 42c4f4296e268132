"""The exception tree of dicom-node, in one place.

::

    NodeError                      base of everything we raise on purpose
    ├── ConfigError                a config key is unknown or its value is invalid
    ├── ConversionError            an input cannot become a DICOM object
    │   ├── UnsupportedInput       not an image format we convert (or not an image at all)
    │   ├── CorruptInput           truncated/inconsistent stream, empty file, SOF/EOI problems
    │   ├── InputTooLarge          pixel count over the configured cap (decompression bomb)
    │   └── MissingMetadata        --strict: a required value nobody supplied
    ├── QueueError                 the job store cannot do what was asked
    ├── AlreadyRunning             another node process holds the state directory
    ├── SendError                  a delivery attempt failed (carries an Outcome)
    ├── ReceiveError               the SCP cannot start or cannot store
    │   └── UnsafePath             a peer-supplied UID would escape the archive
    └── ExportError                a file cannot be rendered or written
        └── BadPixelData           pixel data inconsistent with the image description

Every message names the file and, where one is involved, the DICOM tag and keyword,
and says how to fix it.
"""


class NodeError(Exception):
    """Base class of every error dicom-node raises on purpose."""


class ConfigError(NodeError):
    """A configuration key is unknown or its value is invalid (the message names the key)."""


class ConversionError(NodeError):
    """An input image cannot be converted into a DICOM object."""


class UnsupportedInput(ConversionError):
    """The input is not an image format dicom-node converts."""


class CorruptInput(ConversionError):
    """The input is damaged: empty, truncated, or internally inconsistent."""


class InputTooLarge(ConversionError):
    """The image has more pixels than the configured cap (possible decompression bomb)."""


class MissingMetadata(ConversionError):
    """Strict mode: a value that must come from the user is missing."""


class QueueError(NodeError):
    """The durable job store cannot do what was asked."""


class AlreadyRunning(NodeError):
    """Another dicom-node process is running on the same ``node.state_dir``."""


class SendError(NodeError):
    """A delivery attempt failed."""


class ReceiveError(NodeError):
    """The SCP cannot start, or cannot store an object."""


class UnsafePath(ReceiveError):
    """A peer-supplied identifier would produce a path outside the archive root."""


class ExportError(NodeError):
    """A DICOM object cannot be rendered or the export cannot be written."""


class BadPixelData(ExportError):
    """Pixel data does not agree with the image pixel description."""
