package nsredge.core

/** What went wrong, as a value an app can switch on (the message says it in words). */
enum class ErrorCode {
    /** model.json is not JSON, not an nsr-edge card, or a field has the wrong type or an impossible value. */
    BAD_CARD,
    /** The card's major version is not the one this core reads (2.x). */
    UNSUPPORTED_VERSION,
    /** The artifact the card names is not where the card says (or the name is a path). */
    MISSING_ARTIFACT,
    /** The engine (or the artifact) does not take the tile the plan feeds it. */
    TILE_NOT_ACCEPTED,
    /** The image has a different number of channels than the model (gray vs RGB). */
    CHANNEL_MISMATCH,
    /** An empty image or pixel buffer of the wrong size. */
    BAD_IMAGE,
    /** The engine returned a tile of the wrong size or with non-finite routing logits. */
    BAD_OUTPUT,
    /** The card's dispatch plan cannot be run with this engine (a method it lacks, an undefined value). */
    DISPATCH
}

/** Every refusal of the core: a code and one line that names the file, field or size involved. */
class SrCoreException(val code: ErrorCode, message: String) : Exception(message)

internal fun fail(code: ErrorCode, message: String): Nothing = throw SrCoreException(code, message)
