import AVFoundation
import CoreML
import SwiftUI

/// Camera preview, model and compute-unit pickers, the bicubic crop beside the restored one, and the latency.
struct ContentView: View {
    @Bindable var model: DemoModel

    var body: some View {
        VStack(spacing: 8) {
            CameraPreview(session: model.camera.session)
                .frame(maxHeight: .infinity)
            HStack {
                Picker("Model", selection: $model.selected) {
                    ForEach(model.models) { m in Text(m.label).tag(Optional(m)) }
                }
                Picker("Compute units", selection: $model.computeUnits) {
                    ForEach(MLComputeUnits.choices, id: \.0) { Text($0.0).tag($0.1) }
                }
                .pickerStyle(.segmented)
            }
            HStack {
                Crop(title: "Bicubic", image: model.bicubic)
                Crop(title: "Restored", image: model.restored)
            }
            .frame(maxHeight: .infinity)
            Text(model.status)
                .font(.caption.monospaced())
                .frame(maxWidth: .infinity, alignment: .leading)
        }
        .padding()
    }
}

private struct Crop: View {
    let title: String
    let image: CGImage?

    var body: some View {
        VStack(alignment: .leading) {
            Text(title).font(.caption)
            if let image {
                Image(decorative: image, scale: 1).resizable().interpolation(.none).scaledToFit()
            } else {
                Color.secondary.opacity(0.2)
            }
        }
    }
}

/// AVCaptureVideoPreviewLayer in SwiftUI.
struct CameraPreview: UIViewRepresentable {
    let session: AVCaptureSession

    final class PreviewView: UIView {
        override class var layerClass: AnyClass { AVCaptureVideoPreviewLayer.self }
        var previewLayer: AVCaptureVideoPreviewLayer { layer as! AVCaptureVideoPreviewLayer }
    }

    func makeUIView(context: Context) -> PreviewView {
        let v = PreviewView()
        v.previewLayer.session = session
        v.previewLayer.videoGravity = .resizeAspect
        return v
    }

    func updateUIView(_ view: PreviewView, context: Context) {}
}

/// A camera stand-in for SwiftUI previews: no frames.
struct PreviewCamera: FrameSource {
    let session = AVCaptureSession()
    func start() async throws -> AsyncStream<CGImage> { AsyncStream { $0.finish() } }
    func stop() async {}
}

#Preview {
    ContentView(model: DemoModel(camera: PreviewCamera()))
}
