import AVFoundation
import CoreImage

/// What the UI model needs of a camera: frames as an async stream (a stand-in feeds previews and tests).
protocol FrameSource: Sendable {
    func start() async throws -> AsyncStream<CGImage>
    func stop() async
    var session: AVCaptureSession { get }
}

enum CameraError: Error, CustomStringConvertible {
    case denied, noCamera, cannotAdd
    var description: String {
        switch self {
        case .denied: return "camera access denied (Settings > Privacy > Camera)"
        case .noCamera: return "no back camera"
        case .cannotAdd: return "the capture session refused the camera input or output"
        }
    }
}

/// The capture pipeline, off the main actor (Apple's AVCam pattern): one AVCaptureSession, BGRA frames from an
/// AVCaptureVideoDataOutput delivered as CGImages, newest only (late frames are dropped).
actor CameraActor: FrameSource {
    nonisolated let session = AVCaptureSession()
    private let output = AVCaptureVideoDataOutput()
    private let queue = DispatchQueue(label: "nsr-edge.camera.frames")
    private var delegate: FrameDelegate?

    func start() async throws -> AsyncStream<CGImage> {
        guard await AVCaptureDevice.requestAccess(for: .video) else { throw CameraError.denied }
        guard let device = AVCaptureDevice.default(.builtInWideAngleCamera, for: .video, position: .back) else {
            throw CameraError.noCamera
        }
        let input = try AVCaptureDeviceInput(device: device)
        session.beginConfiguration()
        session.sessionPreset = .hd1280x720
        guard session.canAddInput(input), session.canAddOutput(output) else {
            session.commitConfiguration()
            throw CameraError.cannotAdd
        }
        session.addInput(input)
        output.videoSettings = [kCVPixelBufferPixelFormatTypeKey as String: kCVPixelFormatType_32BGRA]
        output.alwaysDiscardsLateVideoFrames = true
        session.addOutput(output)
        if let connection = output.connection(with: .video), connection.isVideoRotationAngleSupported(90) {
            connection.videoRotationAngle = 90  // portrait
        }
        session.commitConfiguration()
        let (stream, continuation) = AsyncStream.makeStream(of: CGImage.self, bufferingPolicy: .bufferingNewest(1))
        let d = FrameDelegate(continuation)
        delegate = d
        output.setSampleBufferDelegate(d, queue: queue)
        session.startRunning()
        return stream
    }

    func stop() {
        session.stopRunning()
        delegate?.continuation.finish()
        delegate = nil
    }
}

private final class FrameDelegate: NSObject, AVCaptureVideoDataOutputSampleBufferDelegate, @unchecked Sendable {
    let continuation: AsyncStream<CGImage>.Continuation
    private let context = CIContext()

    init(_ continuation: AsyncStream<CGImage>.Continuation) { self.continuation = continuation }

    func captureOutput(_ output: AVCaptureOutput, didOutput sampleBuffer: CMSampleBuffer, from connection: AVCaptureConnection) {
        guard let pixels = CMSampleBufferGetImageBuffer(sampleBuffer) else { return }
        let image = CIImage(cvPixelBuffer: pixels)
        if let cg = context.createCGImage(image, from: image.extent) { continuation.yield(cg) }
    }
}
