package dev.nsredge.demo

import android.graphics.Bitmap
import android.os.SystemClock
import dev.nsredge.demo.engine.AppEngine
import nsredge.core.ModelCard
import nsredge.core.RunStats
import nsredge.core.TiledRunner

/** One processed frame: the two crops shown side by side and what it cost. */
class FrameResult(val bicubic: Bitmap, val restored: Bitmap, val frameMs: Double, val stats: RunStats,
                  val routes: List<List<Int>>)

/**
 * Owns one engine and runs the card's tiled inference on the centre crop of a frame (the helper class of LiteRT's
 * super-resolution sample: load, run, close). Not thread-safe: call it from one thread.
 */
class SuperResolver(val card: ModelCard, private val engine: AppEngine, private val cropSide: Int = CROP) : AutoCloseable {
    private val runner = TiledRunner(card, engine)
    val describe: String get() = engine.describe

    fun process(frame: Bitmap): FrameResult {
        val t0 = SystemClock.elapsedRealtimeNanos()
        val crop = ImageOps.centerCrop(frame, cropSide)
        val restoredImage = runner.run(ImageOps.modelInput(crop, card.channels))
        val bicubic = ImageOps.bicubic(crop, card.scale)
        val restored = if (card.channels == 1) ImageOps.mergeLuma(restoredImage, bicubic) else ImageOps.toBitmap(restoredImage)
        val ms = (SystemClock.elapsedRealtimeNanos() - t0) / 1e6
        return FrameResult(bicubic, restored, ms, runner.lastStats, runner.lastRoutes)
    }

    override fun close() = engine.close()

    companion object {
        /** Input pixels of the crop (its output is CROP * scale on a side). */
        const val CROP = 128
    }
}
