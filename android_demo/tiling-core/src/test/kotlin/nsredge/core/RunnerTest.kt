package nsredge.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class RunnerTest {
    private fun expect(code: ErrorCode, contains: String, block: () -> Unit) {
        try {
            block()
            fail("no error ($contains)")
        } catch (e: SrCoreException) {
            assertEquals(e.message, code, e.code)
            assertTrue("'${e.message}' should mention '$contains'", e.message!!.contains(contains))
        }
    }

    private fun engine(shape: IntArray?, out: (Tensor) -> Tensor) = object : TileEngine {
        override val methods = setOf("forward")
        override fun inputShape(method: String) = shape
        override fun execute(method: String, inputs: List<Tensor>) = listOf(out(inputs[0]))
    }

    @Test fun grayVersusRgb() {
        val rgb = Vectors.card("executorch_fp32")
        val gray = Vectors.card("onnxruntime_gray")
        expect(ErrorCode.CHANNEL_MISMATCH, "takes 3-channel images, got 1") {
            TiledRunner(rgb, StandInEngine(2)).run(FloatImage(1, 9, 9, FloatArray(81)))
        }
        expect(ErrorCode.CHANNEL_MISMATCH, "lumaOf") {
            TiledRunner(gray, StandInEngine(1)).run(FloatImage(3, 9, 9, FloatArray(243)))
        }
    }

    @Test fun aTileTheEngineDoesNotTake() {
        val card = Vectors.card("executorch_fp32")
        expect(ErrorCode.TILE_NOT_ACCEPTED, "the engine takes 1x3x32x32") {
            TiledRunner(card, engine(intArrayOf(1, 3, 32, 32)) { it })
        }
        expect(ErrorCode.TILE_NOT_ACCEPTED, "no method 'forward'") {
            TiledRunner(card, StandInEngine(2, "forward_48x48"))
        }
        TiledRunner(card, engine(intArrayOf(1, 3, 24, 24)) { StandInEngine.standIn(it, 2) })  // the right one
    }

    @Test fun anOutputOfTheWrongSize() {
        val card = Vectors.card("executorch_fp32")
        expect(ErrorCode.BAD_OUTPUT, "expected 1x3x48x48") {
            TiledRunner(card, engine(null) { StandInEngine.standIn(it, 3) }).run(FloatImage(3, 9, 9, FloatArray(243)))
        }
    }

    @Test fun statsAndProgress() {
        val card = Vectors.card("executorch_fp32")
        val runner = TiledRunner(card, StandInEngine(2))
        var seen = 0
        val out = runner.run(FloatImage(3, 37, 29, FloatArray(3 * 37 * 29)), { done, total -> seen = done; assertEquals(12, total) })
        assertEquals(12, seen)
        assertEquals(12, runner.lastStats.tiles)
        assertEquals(74, out.height)
        assertEquals(58, out.width)
    }
}
