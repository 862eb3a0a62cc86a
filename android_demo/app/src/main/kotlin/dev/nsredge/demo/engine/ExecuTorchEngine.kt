package dev.nsredge.demo.engine

import java.io.File
import nsredge.core.ErrorCode
import nsredge.core.Layout
import nsredge.core.ModelCard
import nsredge.core.SrCoreException
import nsredge.core.Tensor
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor as EtTensor

/**
 * An ExecuTorch `.pte` (XNNPACK) behind the core's TileEngine: `forward` for a single-program card, or the named
 * per-bank programs of a hard-routed (`dispatch`) card, which the core's Dispatcher calls stage by stage.
 *
 * Memory order: the Java `Tensor.fromBlob` has no dim-order argument, so a tensor always arrives with the default
 * (contiguous) dim order and its bytes are copied as they are into the program's input. The dispatch programs take
 * channels-last inputs: the core packs their tiles (and keeps their outputs) in NHWC memory order, so the bytes
 * handed over are the ones the program reads. Checked with the Python ExecuTorch runtime on a dispatch `.pte` (a
 * contiguous tensor holding NHWC bytes gives the channels-last result); not checked on a phone.
 */
class ExecuTorchEngine(pte: File, card: ModelCard, threads: Int) : AppEngine {
    private val module: Module = try {
        Module.load(pte.absolutePath, Module.LOAD_MODE_MMAP, threads)
    } catch (e: RuntimeException) {
        throw SrCoreException(ErrorCode.MISSING_ARTIFACT, "${pte.name}: ExecuTorch could not load it (${e.message})")
    }
    /** Memory order of the program's 4-d outputs: the dispatch plan's layout (channels last), else NCHW. */
    private val outputLayout: Layout = card.dispatch?.layout ?: Layout.NCHW

    override val methods: Set<String> = module.getMethods().toSet()
    override val describe: String = "ExecuTorch ${pte.name}, ${methods.size} method(s), $threads thread(s)"

    init {
        for (m in methods) module.loadMethod(m)  // plan every method now, not on the first frame
    }

    /** The Java API cannot tell input shapes before a call; the core checks each output's shape instead. */
    override fun inputShape(method: String): IntArray? = null

    override fun execute(method: String, inputs: List<Tensor>): List<Tensor> {
        val args = inputs.map { t -> EValue.from(EtTensor.fromBlob(t.data, LongArray(t.shape.size) { t.shape[it].toLong() })) }
        val outs = try {
            module.execute(method, *args.toTypedArray())
        } catch (e: RuntimeException) {
            throw SrCoreException(ErrorCode.TILE_NOT_ACCEPTED, "ExecuTorch method $method refused inputs " +
                "${inputs.joinToString { it.shapeText() }}: ${e.message}")
        }
        return outs.map { ev ->
            val t = ev.toTensor()
            val s = t.shape()
            val shape = IntArray(s.size) { s[it].toInt() }
            Tensor(shape, t.dataAsFloatArray, if (shape.size == 4) outputLayout else Layout.NCHW)
        }
    }

    override fun close() = module.destroy()
}
