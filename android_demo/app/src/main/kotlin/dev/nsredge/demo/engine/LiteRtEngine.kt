package dev.nsredge.demo.engine

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import nsredge.core.ErrorCode
import nsredge.core.Layout
import nsredge.core.ModelCard
import nsredge.core.QuantParams
import nsredge.core.SrCoreException
import nsredge.core.Tensor
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter

/**
 * A LiteRT `.tflite` behind the core's TileEngine, with the `Interpreter` API (CPU, XNNPACK by default).
 *
 * Single-program cards: one file per method (`model.tflite` for `forward`, `model_<method>.tflite` per extra tile,
 * the converter's naming), NCHW float32 I/O, or int8 input with the card's scale and zero point
 * (`target_extra.litert`). Hard-routed cards (`target_extra.dispatch` in a LiteRT card): one file with one signature
 * per program; inputs `args_0, args_1, ...` and outputs `output_0, ...` in index order, channels-last tensors
 * ([1, H, W, C] in the file). That path follows the converter's hard-routing work and has not run on a phone.
 */
class LiteRtEngine(dir: File, private val card: ModelCard, threads: Int) : AppEngine {
    private val options = Interpreter.Options().setNumThreads(threads)
    private val plan = card.dispatch
    private val interpreters: Map<String, Interpreter> = if (plan != null) {
        mapOf(SIGNATURES to open(File(dir, card.artifact.file)))
    } else {
        card.methods.associate { m -> m.name to open(File(dir, fileOf(m.name))) }
    }

    override val methods: Set<String> =
        if (plan != null) interpreters.getValue(SIGNATURES).signatureKeys.toSet() else interpreters.keys
    override val describe: String = "LiteRT ${card.artifact.file}, ${methods.size} method(s), $threads thread(s)"

    private fun open(file: File): Interpreter {
        if (!file.isFile) {
            throw SrCoreException(ErrorCode.MISSING_ARTIFACT, "${file.name} is missing next to model.json " +
                "(export the model again with `nsr-edge export-app-assets`)")
        }
        return Interpreter(file, options)
    }

    /** NCHW input shape of a single-program method (from the interpreter); null for signatures (channels last). */
    override fun inputShape(method: String): IntArray? =
        if (plan != null) null else interpreters[method]?.getInputTensor(0)?.shape()

    override fun execute(method: String, inputs: List<Tensor>): List<Tensor> =
        if (plan == null) listOf(single(method, inputs)) else signature(method, inputs, plan.layout)

    private fun single(method: String, inputs: List<Tensor>): Tensor {
        val interp = interpreters[method]
            ?: throw SrCoreException(ErrorCode.TILE_NOT_ACCEPTED, "LiteRT model has no method $method")
        if (inputs.size != 1) throw SrCoreException(ErrorCode.DISPATCH, "$method takes one tile, got ${inputs.size}")
        val inT = interp.getInputTensor(0)
        val input = when (inT.dataType()) {
            DataType.FLOAT32 -> floats(inputs[0].data)
            DataType.INT8, DataType.UINT8 -> {
                val q: QuantParams = card.inputQuant[method] ?: throw SrCoreException(ErrorCode.BAD_CARD,
                    "$method takes ${inT.dataType()} but the card gives no scale/zero point for it")
                ByteBuffer.allocateDirect(inputs[0].data.size).order(ByteOrder.nativeOrder()).put(q.quantize(inputs[0].data))
            }
            else -> throw SrCoreException(ErrorCode.TILE_NOT_ACCEPTED, "$method takes ${inT.dataType()} input")
        }
        val outT = interp.getOutputTensor(0)
        val out = ByteBuffer.allocateDirect(outT.numBytes()).order(ByteOrder.nativeOrder())
        interp.run(input.rewind(), out)
        return Tensor(outT.shape(), read(out, outT), Layout.NCHW)
    }

    private fun signature(method: String, inputs: List<Tensor>, layout: Layout): List<Tensor> {
        val interp = interpreters.getValue(SIGNATURES)
        val inNames = byIndex(interp.getSignatureInputs(method))
        val outNames = byIndex(interp.getSignatureOutputs(method))
        if (inNames.size != inputs.size) {
            throw SrCoreException(ErrorCode.DISPATCH, "signature $method takes ${inNames.size} inputs, the plan " +
                "passes ${inputs.size}")
        }
        val ins = HashMap<String, Any>()
        for (i in inNames.indices) ins[inNames[i]] = floats(inputs[i].data).rewind()
        val outs = HashMap<String, Any>()
        val buffers = outNames.map { n ->
            val b = ByteBuffer.allocateDirect(interp.getOutputTensorFromSignature(n, method).numBytes())
                .order(ByteOrder.nativeOrder())
            outs[n] = b
            b
        }
        interp.runSignature(ins, outs, method)
        return outNames.mapIndexed { i, n ->
            val t = interp.getOutputTensorFromSignature(n, method)
            val s = t.shape()
            // channels-last tensors are [1, H, W, C] in the file; the core's shapes are logical NCHW
            val shape = if (s.size == 4 && layout == Layout.NHWC) intArrayOf(s[0], s[3], s[1], s[2]) else s
            Tensor(shape, read(buffers[i], t), if (s.size == 4) layout else Layout.NCHW)
        }
    }

    private fun read(buf: ByteBuffer, t: org.tensorflow.lite.Tensor): FloatArray {
        buf.rewind()
        return when (t.dataType()) {
            DataType.FLOAT32 -> FloatArray(t.numElements()).also { buf.asFloatBuffer().get(it) }
            DataType.INT8, DataType.UINT8 -> {
                val q = t.quantizationParams()
                val bytes = ByteArray(t.numElements()).also { buf.get(it) }
                QuantParams(if (t.dataType() == DataType.INT8) "int8" else "uint8", q.scale.toDouble(), q.zeroPoint)
                    .dequantize(bytes)
            }
            else -> throw SrCoreException(ErrorCode.BAD_OUTPUT, "LiteRT output of type ${t.dataType()}")
        }
    }

    override fun close() {
        for (i in interpreters.values) i.close()
    }

    companion object {
        private const val SIGNATURES = ""

        /** The converter's file naming (runtime/runners/litert_runner.py `method_file`). */
        fun fileOf(method: String): String = if (method == "forward") "model.tflite" else "model_$method.tflite"

        private fun floats(data: FloatArray): ByteBuffer {
            val b = ByteBuffer.allocateDirect(data.size * 4).order(ByteOrder.nativeOrder())
            b.asFloatBuffer().put(data)
            return b
        }

        /** `args_0, args_1, ..., args_10` by their trailing index (not alphabetically). */
        private fun byIndex(names: Array<String>): List<String> =
            names.sortedBy { it.substringAfterLast('_').toIntOrNull() ?: Int.MAX_VALUE }
    }
}
