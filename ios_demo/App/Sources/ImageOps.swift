import CoreGraphics
import Foundation
import SRCore

/// RGBA8 pixels of a CGImage region, the model input, and the bicubic upscale shown beside the model's output.
struct RGBA {
    let width: Int, height: Int
    var bytes: [UInt8]  // interleaved RGBA

    /// The centre `side` x `side` crop of `image` (smaller when the frame is), drawn into RGBA8.
    init?(centerOf image: CGImage, side: Int) {
        let s = min(side, image.width, image.height)
        guard let crop = image.cropping(to: CGRect(x: (image.width - s) / 2, y: (image.height - s) / 2, width: s, height: s))
        else { return nil }
        width = s; height = s
        bytes = [UInt8](repeating: 0, count: s * s * 4)
        let ok = bytes.withUnsafeMutableBytes { buf -> Bool in
            guard let ctx = CGContext(data: buf.baseAddress, width: s, height: s, bitsPerComponent: 8, bytesPerRow: s * 4,
                                      space: CGColorSpaceCreateDeviceRGB(),
                                      bitmapInfo: CGImageAlphaInfo.premultipliedLast.rawValue) else { return false }
            ctx.draw(crop, in: CGRect(x: 0, y: 0, width: s, height: s))
            return true
        }
        if !ok { return nil }
    }

    init(width: Int, height: Int, bytes: [UInt8]) { self.width = width; self.height = height; self.bytes = bytes }

    func modelInput(channels: Int) throws -> FloatImage {
        channels == 1 ? try FloatImage.lumaOf(bytes, height: height, width: width, stride: 4)
                      : try FloatImage.fromInterleaved8(bytes, height: height, width: width, stride: 4, channels: 3)
    }

    /// A model output as RGBA (clip, * 255, round half up); a gray output keeps the Cb/Cr of `colour` (BT.601).
    static func from(_ img: FloatImage, colour: RGBA?) -> RGBA {
        var out = [UInt8](repeating: 255, count: img.width * img.height * 4)
        func q(_ v: Double) -> UInt8 { UInt8(min(255.0, max(0.0, (v + 0.5).rounded(.down)))) }
        for i in 0..<(img.width * img.height) {
            if img.channels == 3 {
                for c in 0..<3 { out[4 * i + c] = q(Double(min(1, max(0, img.data[c * img.width * img.height + i]))) * 255) }
            } else if let colour {
                let r = Double(colour.bytes[4 * i]) / 255, g = Double(colour.bytes[4 * i + 1]) / 255, b = Double(colour.bytes[4 * i + 2]) / 255
                let cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b, cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b
                let y = Double(min(1, max(0, img.data[i]))) * 255 - 16
                out[4 * i] = q(1.164383 * y + 1.596027 * (cr - 128))
                out[4 * i + 1] = q(1.164383 * y - 0.391762 * (cb - 128) - 0.812968 * (cr - 128))
                out[4 * i + 2] = q(1.164383 * y + 2.017232 * (cb - 128))
            }
        }
        return RGBA(width: img.width, height: img.height, bytes: out)
    }

    /// Bicubic upscale by an integer factor (Keys, a = -0.5, pixel centres, replicated edges: MATLAB's imresize).
    func bicubic(scale: Int) -> RGBA {
        if scale == 1 { return self }
        func cubic(_ x: Double) -> Double {
            let a = abs(x)
            return a <= 1 ? 1.5 * a * a * a - 2.5 * a * a + 1 : a < 2 ? -0.5 * a * a * a + 2.5 * a * a - 4 * a + 2 : 0
        }
        func taps(_ n: Int) -> [([Int], [Double])] {
            (0..<(n * scale)).map { o in
                let u = (Double(o) + 0.5) / Double(scale) - 0.5, left = Int(u.rounded(.down)) - 1
                let w = (0..<4).map { cubic(u - Double(left + $0)) }, sum = w.reduce(0, +)
                return ((0..<4).map { min(n - 1, max(0, left + $0)) }, w.map { $0 / sum })
            }
        }
        let xs = taps(width), ys = taps(height), ow = width * scale, oh = height * scale
        var out = [UInt8](repeating: 255, count: ow * oh * 4)
        for oy in 0..<oh { for ox in 0..<ow { for c in 0..<3 {
            var acc = 0.0
            for j in 0..<4 { for i in 0..<4 {
                acc += ys[oy].1[j] * xs[ox].1[i] * Double(bytes[(ys[oy].0[j] * width + xs[ox].0[i]) * 4 + c])
            } }
            out[(oy * ow + ox) * 4 + c] = UInt8(min(255, max(0, (acc + 0.5).rounded(.down))))
        } } }
        return RGBA(width: ow, height: oh, bytes: out)
    }

    var cgImage: CGImage? {
        let data = Data(bytes) as CFData
        guard let provider = CGDataProvider(data: data) else { return nil }
        return CGImage(width: width, height: height, bitsPerComponent: 8, bitsPerPixel: 32, bytesPerRow: width * 4,
                       space: CGColorSpaceCreateDeviceRGB(), bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.noneSkipLast.rawValue),
                       provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent)
    }
}
