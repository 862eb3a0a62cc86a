package nsredge.core

import org.json.JSONArray
import org.json.JSONObject
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class CardTest {
    private fun refused(code: ErrorCode, text: String, contains: String) {
        try {
            ModelCard.parse(text)
            fail("accepted a bad card ($contains)")
        } catch (e: SrCoreException) {
            assertEquals(e.message, code, e.code)
            assertTrue("'${e.message}' should mention '$contains'", e.message!!.contains(contains))
        }
    }

    private fun edited(name: String, edit: (JSONObject) -> Unit): String {
        val o = JSONObject(Vectors.cardText(name))
        edit(o)
        return o.toString()
    }

    @Test fun readsExactlyTheFieldsListedInAppFields() {
        val read = HashSet<String>()
        for (name in Vectors.cardNames()) ModelCard.parse(Vectors.cardText(name), read)
        val declared = Vectors.strings(JSONArray(Vectors.text("app_fields.json"))).toSet()
        assertEquals("fields read by the core vs app_fields.json", declared.sorted(), read.sorted())
    }

    @Test fun cardsConvertWritesTodayParse() {
        val ex = Vectors.card("executorch_fp32")
        assertEquals("executorch", ex.runner)
        assertEquals(2, ex.scale)
        assertEquals(3, ex.channels)
        assertEquals(24, ex.tileSpec.tile)
        assertEquals(4, ex.tileSpec.pad)
        assertEquals("model.pte", ex.artifact.file)
        assertEquals("forward", ex.methods[0].name)
        assertEquals(Layout.NCHW, ex.input.layout)
        assertNull(ex.dispatch)
        val gray = Vectors.card("onnxruntime_gray")
        assertEquals(1, gray.channels)
        assertEquals(1, gray.scale)
        assertEquals("denoise", gray.taskName)
        val coreml = Vectors.card("coreml_fp32")
        assertEquals("directory", coreml.artifact.kind)
        assertEquals("model.mlpackage", coreml.artifact.file)
        val lite = Vectors.card("litert_fp32")
        assertEquals("litert", lite.runner)
        assertTrue("float32 I/O: no quantization", lite.inputQuant.isEmpty())
        val d = Vectors.card("dispatch_fp32").dispatch!!
        assertEquals(Layout.NHWC, d.layout)
        assertEquals(listOf("tile"), d.stages[0].inputs)
        assertTrue(d.stages.any { it.route != null && it.methods.size == 2 })
    }

    @Test fun refusesOtherMajorsAndOldCards() {
        refused(ErrorCode.UNSUPPORTED_VERSION, edited("executorch_fp32") { it.put("version", "3.0") }, "3.0 is not supported")
        refused(ErrorCode.UNSUPPORTED_VERSION, edited("executorch_fp32") { it.put("version", "3.0") }, "update the app")
        refused(ErrorCode.UNSUPPORTED_VERSION, edited("executorch_fp32") { it.put("version", 1) }, "convert again")
        refused(ErrorCode.UNSUPPORTED_VERSION, edited("executorch_fp32") { it.put("version", "2") }, "MAJOR.MINOR")
        // a newer minor with fields this core does not know is read
        val newer = edited("executorch_fp32") { it.put("version", "2.7"); it.put("future_field", JSONObject().put("x", 1)) }
        assertEquals("2.7", ModelCard.parse(newer).version)
    }

    @Test fun refusesBadCardsWithTheField() {
        refused(ErrorCode.BAD_CARD, "not json", "not a JSON object")
        refused(ErrorCode.BAD_CARD, edited("executorch_fp32") { it.put("schema", "other") }, "not an nsr-edge model card")
        refused(ErrorCode.BAD_CARD, edited("executorch_fp32") { it.getJSONObject("tile").remove("pad") }, "tile.pad is missing")
        refused(ErrorCode.BAD_CARD, edited("executorch_fp32") { it.getJSONObject("tile").put("pad", "4") },
                "tile.pad: expected an integer, got '4'")
        refused(ErrorCode.BAD_CARD, edited("executorch_fp32") { it.getJSONObject("tile").put("stride", 99) }, "stride must be in 1..16")
        refused(ErrorCode.BAD_CARD, edited("executorch_fp32") { it.getJSONObject("tile").put("edge_strips", true) }, "fixed tiles")
        refused(ErrorCode.BAD_CARD, edited("executorch_fp32") { it.getJSONObject("tile").put("pad_mode", "wrap") }, "pad_mode")
        refused(ErrorCode.BAD_CARD, edited("executorch_fp32") { it.getJSONObject("model").put("channels", 4) }, "model.channels")
        refused(ErrorCode.BAD_CARD, edited("executorch_fp32") { it.getJSONObject("tile").put("tile", 32) }, "method forward takes")
        refused(ErrorCode.BAD_CARD, edited("dispatch_fp32") { it.getJSONObject("target_extra").remove("dispatch") }, "no target_extra.dispatch")
        refused(ErrorCode.BAD_CARD, edited("dispatch_fp32") {
            it.getJSONObject("target_extra").getJSONObject("dispatch").getJSONArray("stages").getJSONObject(1).remove("route")
        }, "no route")
        refused(ErrorCode.BAD_CARD, edited("executorch_fp32") {
            it.getJSONObject("io").getJSONArray("inputs").getJSONObject(0).put("dtype", "int8")
        }, "without a scale and zero point")
    }

    @Test fun int8InputsTakeTheCardsScaleAndZeroPoint() {
        val text = edited("litert_fp32") {
            val d = it.getJSONObject("target_extra").getJSONObject("litert").getJSONObject("methods")
                .getJSONObject("forward").getJSONArray("inputs").getJSONObject(0)
            d.put("dtype", "int8").put("scale", 0.5).put("zero_point", -3)
        }
        val q = ModelCard.parse(text).inputQuant.getValue("forward")
        assertEquals(0.5, q.scale, 0.0)
        assertEquals(-3, q.zeroPoint)
    }

    @Test fun artifactMustBeThereAndAPlainName() {
        val card = Vectors.card("executorch_fp32")
        assertEquals("model.pte", card.artifactName { it == "model.pte" })
        for ((name, exists) in listOf("model.pte" to false)) {
            try {
                card.artifactName { exists }
                fail("missing artifact accepted")
            } catch (e: SrCoreException) {
                assertEquals(ErrorCode.MISSING_ARTIFACT, e.code)
                assertTrue(e.message, e.message!!.contains("$name, is missing"))
            }
        }
        val outside = ModelCard.parse(edited("executorch_fp32") { it.getJSONObject("artifact").put("file", "../x.pte") })
        try {
            outside.artifactName { true }
            fail("path accepted")
        } catch (e: SrCoreException) {
            assertEquals(ErrorCode.MISSING_ARTIFACT, e.code)
            assertTrue(e.message!!.contains("outside its folder"))
        }
    }

    @Test fun extraTilesAndUnknownTiles() {
        val card = Vectors.card("executorch_fp32")
        assertEquals("forward", card.methodForTile(null).name)
        assertEquals("forward", card.methodForTile(24).name)
        try {
            card.methodForTile(48)
            fail("unknown tile accepted")
        } catch (e: SrCoreException) {
            assertEquals(ErrorCode.TILE_NOT_ACCEPTED, e.code)
            assertTrue(e.message!!.contains("no method for tile 48 (it has 24x24)"))
        }
    }
}
