package dev.nsredge.demo.engine

import java.io.File
import nsredge.core.ErrorCode
import nsredge.core.ModelCard
import nsredge.core.SrCoreException
import nsredge.core.TileEngine

/** An engine the app can close (native memory); [describe] is the line shown under the images. */
interface AppEngine : TileEngine, AutoCloseable {
    val describe: String
}

/** The runtimes of the app, and which card `runner`s each one runs. */
enum class Runtime(val label: String, val runners: Set<String>) {
    EXECUTORCH("ExecuTorch", setOf("executorch", "dispatch")),
    LITERT("LiteRT", setOf("litert"));

    fun runs(card: ModelCard): Boolean = card.runner in runners

    /** Loads the artifact in [dir] (copied out of the assets) for [card] with [threads] CPU threads. */
    fun open(dir: File, card: ModelCard, threads: Int): AppEngine {
        if (!runs(card)) {
            throw SrCoreException(ErrorCode.BAD_CARD, "${card.title}: runner '${card.runner}' is not run by $label " +
                "(it runs ${runners.joinToString()})")
        }
        val artifact = File(dir, card.artifactName { File(dir, it).exists() })
        return when (this) {
            EXECUTORCH -> ExecuTorchEngine(artifact, card, threads)
            LITERT -> LiteRtEngine(dir, card, threads)
        }
    }
}
