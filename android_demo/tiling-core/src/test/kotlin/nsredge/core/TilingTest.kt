package nsredge.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** The Kotlin core against the Python tiler, case by case: plan, packed tiles, int8 packing, stitched output. */
class TilingTest {
    private fun cardOf(case: String) = Vectors.card(Vectors.case(case).getString("card"))
    private fun imageOf(case: String) = Vectors.image(Vectors.case(case).getString("image"))

    @Test fun planEqualsPythonPlan() {
        for (case in Vectors.caseNames()) {
            val img = imageOf(case)
            val plan = planTiles(img.height, img.width, cardOf(case).tileSpec)
            assertEquals(case, Vectors.plan(case), plan)
            assertEquals(case, Vectors.case(case).getInt("tiles"), plan.size)
        }
    }

    @Test fun packedTilesEqualPythonTilesExactly() {
        for (case in Vectors.caseNames()) {
            val img = imageOf(case)
            val card = cardOf(case)
            val plan = planTiles(img.height, img.width, card.tileSpec)
            val packer = TilePacker(img, plan, card.tileSpec.padMode)
            val want = Vectors.floats("cases/$case/tiles.f32")
            val n = want.size / plan.size
            for ((i, t) in plan.withIndex()) {
                val got = packer.tile(t, Layout.NCHW)
                assertArrayEquals("$case tile $i", want.copyOfRange(i * n, (i + 1) * n), got.data, 0f)
                // channels-last packing holds the same values (what dispatch programs take)
                assertArrayEquals("$case tile $i NHWC", got.data, packer.tile(t, Layout.NHWC).toNchw().data, 0f)
            }
        }
    }

    @Test fun stitchedStandInOutputEqualsPython() {
        for (case in Vectors.caseNames()) {
            val card = cardOf(case)
            if (card.dispatch != null) continue  // DispatchTest runs it through the plan
            val runner = TiledRunner(card, StandInEngine(card.scale))
            val out = runner.run(imageOf(case))
            val shape = Vectors.case(case).getJSONArray("output_shape")
            assertEquals(case, shape.getInt(0), out.channels)
            assertEquals(case, shape.getInt(1), out.height)
            assertEquals(case, shape.getInt(2), out.width)
            assertArrayEquals(case, Vectors.floats("cases/$case/output.f32"), out.data, 1e-6f)
        }
    }

    @Test fun int8PackingEqualsPython() {
        val q = Vectors.index.getJSONObject("int8")
        val case = q.getString("case")
        val img = imageOf(case)
        val card = cardOf(case)
        val plan = planTiles(img.height, img.width, card.tileSpec)
        val tile = TilePacker(img, plan, card.tileSpec.padMode).tile(plan[q.getInt("tile")], Layout.NCHW)
        val params = QuantParams(q.getString("dtype"), q.getDouble("scale"), q.getInt("zero_point"))
        assertArrayEquals(Vectors.bytes(q.getString("file")), params.quantize(tile.data))
        val back = params.dequantize(params.quantize(tile.data))
        for (i in back.indices) assertEquals(tile.data[i], back[i], (params.scale / 2 + 1e-6).toFloat())
    }

    @Test fun paddingModesFollowNumpy() {
        // reflect: mirror without the edge; too short an axis falls back to symmetric (edge repeated, folded again)
        assertArrayEquals(intArrayOf(2, 1, 0, 1, 2, 3, 4, 3, 2), padIndexMap(5, 2, 2, "reflect"))
        assertArrayEquals(intArrayOf(0, 0, 0, 0, 0, 0, 0), padIndexMap(1, 3, 3, "reflect"))
        assertArrayEquals(intArrayOf(2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0), padIndexMap(3, 4, 4, "reflect"))
        assertArrayEquals(intArrayOf(0, 0, 0, 1, 1, 1), padIndexMap(2, 2, 2, "edge"))
    }

    @Test fun oddAndTinyImagesAreCoveredOnce() {
        val spec = TileSpec(24, 4, 8)
        for (h in listOf(1, 2, 3, 15, 16, 17, 24, 25, 41)) for (w in listOf(1, 7, 16, 33)) {
            val plan = planTiles(h, w, spec)
            val cover = IntArray(h * w)
            for (t in plan) for (y in t.coreY until t.coreY + t.coreH) for (x in t.coreX until t.coreX + t.coreW) {
                if (y < h && x < w) cover[y * w + x]++
            }
            assertTrue("${h}x$w: every pixel covered", cover.all { it > 0 })
            val img = FloatImage(1, h, w, FloatArray(h * w) { it.toFloat() })
            val out = TiledRunner(Vectors.card("onnxruntime_gray"), StandInEngine(1)).let { r ->
                if (r.spec.tile == 32) r.run(img) else null
            }
            assertEquals(h, out!!.height)
            assertEquals(w, out.width)
        }
    }

    @Test fun refusesEmptyAndMisSizedImages() {
        for (make in listOf({ FloatImage(3, 0, 4, FloatArray(0)) }, { FloatImage(3, 2, 2, FloatArray(5)) },
                            { FloatImage.fromInterleaved8(ByteArray(10), 2, 2, 4, 3) })) {
            try {
                make()
                fail("bad image accepted")
            } catch (e: SrCoreException) {
                assertEquals(ErrorCode.BAD_IMAGE, e.code)
            }
        }
    }

    @Test fun lumaIsMatlabsRgb2ycbcr() {
        // white -> 235, black -> 16, pure red -> 16 + 65.481 = 81.481 -> 81
        val px = byteArrayOf(-1, -1, -1, -1, 0, 0, 0, -1, -1, 0, 0, -1)
        val y = FloatImage.lumaOf(px, 1, 3, 4)
        assertArrayEquals(floatArrayOf(235f / 255f, 16f / 255f, 81f / 255f), y.data, 0f)
    }
}
