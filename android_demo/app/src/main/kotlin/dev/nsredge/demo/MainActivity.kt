package dev.nsredge.demo

import android.Manifest
import android.content.pm.PackageManager
import android.os.Bundle
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Spinner
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.ImageProxy
import androidx.camera.core.Preview
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.core.content.ContextCompat
import dev.nsredge.demo.databinding.ActivityMainBinding
import dev.nsredge.demo.engine.Runtime
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import nsredge.core.SrCoreException

/**
 * CameraX preview + ImageAnalysis (RGBA_8888, latest frame only); each analysed frame's centre crop goes through
 * the chosen model and runtime on one background thread, which also owns loading and closing engines, so an engine
 * is never used by two threads. The UI: runtime, model (the asset folders whose card that runtime runs), threads;
 * the bicubic crop beside the restored one; latency per frame and per tile.
 */
class MainActivity : AppCompatActivity() {
    private lateinit var binding: ActivityMainBinding
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private var models: List<AssetModel> = emptyList()
    private var shown: List<AssetModel> = emptyList()
    private var runtime = Runtime.EXECUTORCH
    private var threads = 4
    private var selected: AssetModel? = null

    // touched only on [worker]
    private var resolver: SuperResolver? = null
    private var loadedKey: String? = null

    private val askCamera = registerForActivityResult(ActivityResultContracts.RequestPermission()) { granted ->
        if (granted) startCamera() else binding.status.text = getString(R.string.camera_denied)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        binding = ActivityMainBinding.inflate(layoutInflater)
        setContentView(binding.root)
        models = AssetModels.list(this)
        setUpPickers()
        if (ContextCompat.checkSelfPermission(this, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED) {
            startCamera()
        } else {
            askCamera.launch(Manifest.permission.CAMERA)
        }
    }

    private fun setUpPickers() {
        binding.runtime.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, Runtime.values().map { it.label })
        binding.runtime.onSelected { i ->
            runtime = Runtime.values()[i]
            refreshModels()
        }
        val counts = listOf(1, 2, 4, 6, 8)
        binding.threads.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, counts.map { "$it thr" })
        binding.threads.setSelection(counts.indexOf(threads))
        binding.threads.onSelected { i -> threads = counts[i] }
        binding.model.onSelected { i -> selected = shown.getOrNull(i) }
        refreshModels()
    }

    private fun refreshModels() {
        shown = models.filter { m -> m.card == null || runtime.runs(m.card) }
        val labels = if (shown.isEmpty()) listOf(getString(R.string.no_models)) else shown.map { it.label }
        binding.model.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, labels)
        selected = shown.firstOrNull()
    }

    private fun startCamera() {
        val future = ProcessCameraProvider.getInstance(this)
        future.addListener({
            val provider = future.get()
            val preview = Preview.Builder().build().also { it.setSurfaceProvider(binding.preview.surfaceProvider) }
            val analysis = ImageAnalysis.Builder()
                .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_RGBA_8888)
                .build()
            analysis.setAnalyzer(worker) { image -> analyze(image) }
            provider.unbindAll()
            provider.bindToLifecycle(this, CameraSelector.DEFAULT_BACK_CAMERA, preview, analysis)
        }, ContextCompat.getMainExecutor(this))
    }

    /** On [worker]: (re)load the engine when the choice changed, run the frame, post the result. */
    private fun analyze(image: ImageProxy) {
        val frame = image.use { ImageOps.rotate(it.toBitmap(), it.imageInfo.rotationDegrees) }
        val model = selected ?: return
        val card = model.card ?: return post("${model.folder}: ${model.error}")
        val key = "${model.folder}|$runtime|$threads"
        try {
            if (key != loadedKey) {
                resolver?.close()
                resolver = null
                loadedKey = null
                val dir = AssetModels.materialize(this, model)
                resolver = SuperResolver(card, runtime.open(dir, card, threads))
                loadedKey = key
            }
            val res = resolver ?: return  // this choice was refused: its message stays on screen
            val r = res.process(frame)
            val routes = if (r.routes.isEmpty()) "" else "  banks ${r.routes.firstOrNull()?.joinToString("")}"
            val text = "${card.title}\n${res.describe}\n" +
                "frame %.1f ms (model %.1f ms), %d tiles of %d px, %.2f ms/tile$routes"
                    .format(r.frameMs, r.stats.engineMs, r.stats.tiles, card.tileSpec.tile, r.stats.msPerTile)
            runOnUiThread {
                binding.bicubic.setImageBitmap(r.bicubic)
                binding.restored.setImageBitmap(r.restored)
                binding.status.text = text
            }
        } catch (e: SrCoreException) {
            loadedKey = key  // do not retry a refused model on every frame
            post("${e.code}: ${e.message}")
        }
    }

    private fun post(text: String) = runOnUiThread { binding.status.text = text }

    override fun onDestroy() {
        super.onDestroy()
        worker.execute { resolver?.close() }
        worker.shutdown()
    }

    private fun Spinner.onSelected(action: (Int) -> Unit) {
        onItemSelectedListener = object : AdapterView.OnItemSelectedListener {
            override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) = action(position)
            override fun onNothingSelected(parent: AdapterView<*>?) {}
        }
    }
}
