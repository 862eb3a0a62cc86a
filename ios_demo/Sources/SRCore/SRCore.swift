import Foundation

// The pure tiling core of the iOS demo: a line-by-line port of android_demo/tiling-core (Kotlin), which is the one
// compiled and tested on our machines; both follow runtime/tiling.py and docs/model_card.md.

public enum ErrorCode: String, Sendable {
    case badCard, unsupportedVersion, missingArtifact, tileNotAccepted, channelMismatch, badImage, badOutput, dispatch
}

public struct SRCoreError: Error, CustomStringConvertible, Sendable {
    public let code: ErrorCode
    public let message: String
    public var description: String { message }
}

@inline(__always) func fail(_ code: ErrorCode, _ message: String) -> SRCoreError { SRCoreError(code: code, message: message) }

public enum Layout: Sendable {
    case nchw, nhwc
    static func parse(_ text: String, _ whereText: String) throws -> Layout {
        switch text {
        case "NCHW", "contiguous": return .nchw
        case "NHWC", "channels_last": return .nhwc
        default: throw fail(.badCard, "\(whereText): unknown layout '\(text)' (NCHW, NHWC or channels_last)")
        }
    }
}

/// Dense float32 tensor: `shape` is the logical NCHW shape, `data` is in `layout` memory order.
public struct Tensor: Sendable {
    public let shape: [Int]
    public var data: [Float]
    public let layout: Layout
    public init(shape: [Int], data: [Float], layout: Layout = .nchw) {
        precondition(shape.reduce(1, *) == data.count, "tensor \(shape) needs \(shape.reduce(1, *)) values")
        self.shape = shape; self.data = data; self.layout = layout
    }
    public func toNCHW() -> Tensor {
        if layout == .nchw { return self }
        let (c, h, w) = (shape[1], shape[2], shape[3])
        var out = [Float](repeating: 0, count: data.count)
        for y in 0..<h { for x in 0..<w { for k in 0..<c { out[(k * h + y) * w + x] = data[(y * w + x) * c + k] } } }
        return Tensor(shape: shape, data: out, layout: .nchw)
    }
}

/// CHW float image (8-bit pixel / 255).
public struct FloatImage: Sendable {
    public let channels: Int, height: Int, width: Int
    public var data: [Float]
    public init(channels: Int, height: Int, width: Int, data: [Float]) throws {
        guard channels >= 1, height >= 1, width >= 1 else {
            throw fail(.badImage, "empty image \(channels)x\(height)x\(width) (channels x height x width)")
        }
        guard data.count == channels * height * width else {
            throw fail(.badImage, "image \(channels)x\(height)x\(width) needs \(channels * height * width) values, got \(data.count)")
        }
        self.channels = channels; self.height = height; self.width = width; self.data = data
    }
    @inline(__always) public subscript(c: Int, y: Int, x: Int) -> Float { data[(c * height + y) * width + x] }

    /// From interleaved 8-bit pixels (`stride` bytes per pixel): the first `channels` of each, / 255.
    public static func fromInterleaved8(_ px: [UInt8], height: Int, width: Int, stride: Int, channels: Int) throws -> FloatImage {
        guard height >= 1, width >= 1, channels <= stride, px.count == height * width * stride else {
            throw fail(.badImage, "\(height)x\(width) pixels of \(stride) bytes need \(height * width * stride) bytes, got \(px.count)")
        }
        var out = [Float](repeating: 0, count: channels * height * width)
        for y in 0..<height { for x in 0..<width { for c in 0..<channels {
            out[(c * height + y) * width + x] = Float(px[(y * width + x) * stride + c]) / 255
        } } }
        return try FloatImage(channels: channels, height: height, width: width, data: out)
    }

    /// BT.601 luma rounded to 8 bits, / 255 (nsr-edge's `rgb_to_y8`): the input of a gray model from an RGB photo.
    public static func lumaOf(_ px: [UInt8], height: Int, width: Int, stride: Int) throws -> FloatImage {
        guard stride >= 3, height >= 1, width >= 1, px.count == height * width * stride else {
            throw fail(.badImage, "luma needs \(height)x\(width) RGB pixels of \(stride) bytes")
        }
        var out = [Float](repeating: 0, count: height * width)
        for i in 0..<(height * width) {
            let r = Double(px[i * stride]), g = Double(px[i * stride + 1]), b = Double(px[i * stride + 2])
            let y = 16.0 + r * (65.481 / 255.0) + g * (128.553 / 255.0) + b * (24.966 / 255.0)
            out[i] = Float((min(255.0, max(0.0, y)) + 0.5).rounded(.down)) / 255
        }
        return try FloatImage(channels: 1, height: height, width: width, data: out)
    }
}

// MARK: - tiling (runtime/tiling.py, edge_strips false)

public struct TileSpec: Sendable, Equatable {
    public let tile: Int, pad: Int, stride: Int, padMode: String
    public var core: Int { tile - 2 * pad }
    public init(tile: Int, pad: Int, stride: Int, padMode: String = "reflect") throws {
        self.tile = tile; self.pad = pad; self.stride = stride; self.padMode = padMode
        guard tile >= 1, pad >= 0 else { throw fail(.badCard, "tile: need tile >= 1 and pad >= 0 (tile \(tile), pad \(pad))") }
        guard core >= 1 else { throw fail(.badCard, "tile: tile \(tile) leaves no core after a \(pad) px margin on each side") }
        guard stride >= 1, stride <= core else {
            throw fail(.badCard, "tile: stride must be in 1..\(core) (tile - 2*pad) or cores leave gaps, got \(stride)")
        }
        guard ["reflect", "symmetric", "edge"].contains(padMode) else {
            throw fail(.badCard, "tile: pad_mode must be one of reflect, symmetric, edge, got '\(padMode)'")
        }
    }
}

public struct TilePlacement: Equatable, Sendable {
    public let y: Int, x: Int, height: Int, width: Int, coreY: Int, coreX: Int, coreH: Int, coreW: Int
    public let weight: Double
}

private func axis(_ n: Int, _ spec: TileSpec) -> (starts: [Int], core: Int) {
    let length = n + 2 * spec.pad
    if length <= spec.tile { return ([0], n) }
    var starts = Array(stride(from: 0, to: length - spec.tile, by: spec.stride))
    starts.append(length - spec.tile)
    return (starts, spec.core)
}

public func planTiles(height: Int, width: Int, spec: TileSpec) throws -> [TilePlacement] {
    guard height >= 1, width >= 1 else { throw fail(.badImage, "plan: empty image \(height)x\(width)") }
    let ay = axis(height, spec), ax = axis(width, spec)
    var out: [TilePlacement] = []
    for py in ay.starts { for px in ax.starts {
        out.append(TilePlacement(y: py - spec.pad, x: px - spec.pad, height: spec.tile, width: spec.tile,
                                 coreY: py, coreX: px, coreH: ay.core, coreW: ax.core, weight: 1.0))
    } }
    return out
}

/// Source index of every padded position along one axis (numpy's reflect/symmetric/edge; reflect falls back to
/// symmetric on an axis shorter than pad + 1, as runtime/tiling.py).
public func padIndexMap(n: Int, before: Int, after: Int, padMode: String) -> [Int] {
    var mode = padMode
    if mode == "reflect" && max(before, after) > n - 1 { mode = "symmetric" }
    return (0..<(before + n + after)).map { i in
        let j = i - before
        if j >= 0 && j < n { return j }
        switch mode {
        case "edge": return j < 0 ? 0 : n - 1
        case "reflect": return j < 0 ? -j : 2 * (n - 1) - j
        default:
            let m = ((j % (2 * n)) + 2 * n) % (2 * n)
            return m < n ? m : 2 * n - 1 - m
        }
    }
}

public struct TilePacker {
    let image: FloatImage
    let top: Int, left: Int, rows: [Int], cols: [Int]
    public init(image: FloatImage, plan: [TilePlacement], padMode: String) {
        self.image = image
        top = max(0, -(plan.map(\.y).min() ?? 0))
        left = max(0, -(plan.map(\.x).min() ?? 0))
        rows = padIndexMap(n: image.height, before: top, after: max(0, (plan.map { $0.y + $0.height }.max() ?? 0) - image.height), padMode: padMode)
        cols = padIndexMap(n: image.width, before: left, after: max(0, (plan.map { $0.x + $0.width }.max() ?? 0) - image.width), padMode: padMode)
    }
    public func tile(_ t: TilePlacement, layout: Layout) -> Tensor {
        let c = image.channels, h = t.height, w = t.width
        var out = [Float](repeating: 0, count: c * h * w)
        for k in 0..<c { for y in 0..<h {
            let sy = rows[t.y + top + y]
            for x in 0..<w {
                let v = image[k, sy, cols[t.x + left + x]]
                if layout == .nchw { out[(k * h + y) * w + x] = v } else { out[(y * w + x) * c + k] = v }
            }
        } }
        return Tensor(shape: [1, c, h, w], data: out, layout: layout)
    }
}

public struct QuantParams: Sendable {
    public let dtype: String, scale: Double, zeroPoint: Int
    public init(dtype: String, scale: Double, zeroPoint: Int) throws {
        guard dtype == "int8" || dtype == "uint8" else { throw fail(.badCard, "quantized input dtype '\(dtype)' (int8 or uint8)") }
        guard scale > 0, scale.isFinite else { throw fail(.badCard, "quantized input needs a scale > 0, got \(scale)") }
        self.dtype = dtype; self.scale = scale; self.zeroPoint = zeroPoint
    }
    /// clamp(round_half_away(x / scale) + zero_point), x / scale in float32; int8 values as their bit patterns.
    public func quantize(_ values: [Float]) -> [UInt8] {
        let lo = dtype == "int8" ? -128.0 : 0.0, hi = dtype == "int8" ? 127.0 : 255.0
        let s = Float(scale)
        return values.map { x in
            let v = Double(x / s)
            let r = v >= 0 ? (v + 0.5).rounded(.down) : -((-v + 0.5).rounded(.down))
            return UInt8(truncatingIfNeeded: Int(min(hi, max(lo, r + Double(zeroPoint)))))
        }
    }
}

public final class Stitcher {
    let plan: [TilePlacement], scale: Int, channels: Int
    public let height: Int, width: Int
    var acc: [Float]
    var added = 0
    public init(plan: [TilePlacement], scale: Int, channels: Int) {
        self.plan = plan; self.scale = scale; self.channels = channels
        height = plan.map { $0.coreY + $0.coreH }.max() ?? 0
        width = plan.map { $0.coreX + $0.coreW }.max() ?? 0
        acc = [Float](repeating: 0, count: channels * height * scale * width * scale)
    }
    public func add(_ output: Tensor) throws {
        guard added < plan.count else { throw fail(.badOutput, "got more outputs than the \(plan.count) tiles of the plan") }
        let t = plan[added], s = scale, th = t.height * s, tw = t.width * s
        guard output.shape == [1, channels, th, tw] else {
            throw fail(.badOutput, "tile \(added + 1) of \(plan.count): the engine returned \(output.shape); expected \([1, channels, th, tw])")
        }
        let src = output.toNCHW().data
        let oy = (t.coreY - t.y) * s, ox = (t.coreX - t.x) * s, oh = height * s, ow = width * s
        let w = Float(t.weight)
        for c in 0..<channels { for y in 0..<(t.coreH * s) {
            let dst = (c * oh + t.coreY * s + y) * ow + t.coreX * s, from = (c * th + oy + y) * tw + ox
            for x in 0..<(t.coreW * s) { acc[dst + x] += w * src[from + x] }
        } }
        added += 1
    }
    public func result() throws -> FloatImage {
        guard added == plan.count else { throw fail(.badOutput, "got outputs for \(added) of \(plan.count) tiles") }
        var weights = [Double](repeating: 0, count: height * width)
        for t in plan { for y in t.coreY..<(t.coreY + t.coreH) { for x in t.coreX..<(t.coreX + t.coreW) { weights[y * width + x] += t.weight } } }
        let oh = height * scale, ow = width * scale
        var out = acc
        for c in 0..<channels { for y in 0..<oh { for x in 0..<ow {
            let i = (c * oh + y) * ow + x
            out[i] = acc[i] / Float(weights[(y / scale) * width + x / scale])
        } } }
        return try FloatImage(channels: channels, height: oh, width: ow, data: out)
    }
}
