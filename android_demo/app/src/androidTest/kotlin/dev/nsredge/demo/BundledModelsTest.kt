package dev.nsredge.demo

import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import dev.nsredge.demo.engine.Runtime
import nsredge.core.Layout
import nsredge.core.TiledRunner
import nsredge.core.planTiles
import nsredge.core.TilePacker
import nsredge.core.FloatImage
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith

/**
 * Sanity check on a phone or emulator (`./gradlew connectedAndroidTest`): every bundled model's card is accepted,
 * its artifact loads in the runtime that runs it, and one tile (through the dispatch plan for hard-routed cards)
 * comes back as [1, C, tile * scale, tile * scale] with finite values. Needs models in assets
 * (`nsr-edge export-app-assets`, README).
 */
@RunWith(AndroidJUnit4::class)
class BundledModelsTest {
    private val context = InstrumentationRegistry.getInstrumentation().targetContext

    @Test
    fun everyBundledModelRunsOneTile() {
        val models = AssetModels.list(context)
        assertTrue("no model in assets: run `nsr-edge export-app-assets` before building", models.isNotEmpty())
        for (model in models) {
            assertNull("${model.folder}: card refused", model.error)
            val card = model.card!!
            val runtime = Runtime.values().firstOrNull { it.runs(card) } ?: continue  // e.g. a Core ML card
            val dir = AssetModels.materialize(context, model)
            runtime.open(dir, card, 2).use { engine ->
                val runner = TiledRunner(card, engine)
                val t = card.tileSpec.tile
                // an image exactly one core wide and high: one tile
                val side = t - 2 * card.tileSpec.pad
                val image = FloatImage(card.channels, side, side, FloatArray(card.channels * side * side) { (it % 97) / 96f })
                val out = runner.run(image)
                assertEquals(model.folder, 1, runner.lastStats.tiles)
                assertArrayEquals(model.folder, intArrayOf(card.channels, side * card.scale, side * card.scale),
                                  intArrayOf(out.channels, out.height, out.width))
                assertTrue(model.folder, out.data.all { !it.isNaN() && !it.isInfinite() })
                if (card.dispatch == null) {  // the raw method too: the card's output shape
                    val plan = planTiles(side, side, runner.spec)
                    val x = TilePacker(image, plan, runner.spec.padMode).tile(plan[0], Layout.NCHW)
                    val y = engine.execute(runner.method.name, listOf(x)).single()
                    assertArrayEquals(model.folder, card.methods[0].outputShape, y.shape)
                }
            }
        }
    }
}
