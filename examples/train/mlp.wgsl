// A one-hidden-layer perceptron with softmax cross-entropy: forward pass,
// loss and gradients, written by the example (not by the library), into
// the parameter and gradient buffers that the library's optimizer then
// steps in place.
//
// The host prepends the sizes: `const D` (inputs), `const H` (hidden
// units), `const C` (classes).
//
// Parameters and gradients, packed back to back as wgpu_optim::Layout packs
// the tensors [W1, b1, W2, b2]:
//   W1  D×H   at 0          W1[k][j] = params[k*H + j]
//   b1  H     at D*H
//   W2  H×C   at D*H + H    W2[j][c] = params[W2_AT + j*C + c]
//   b2  C     at D*H + H + H*C
//
// Model: h = relu(x·W1 + b1), z = h·W2 + b2, loss = mean over the batch of
// logsumexp(z) − z[label].

const B1_AT: u32 = D * H;
const W2_AT: u32 = D * H + H;
const B2_AT: u32 = D * H + H + H * C;

struct Step {
    // Rows of `order` this step uses: order[start .. start + size].
    start: u32,
    size: u32,
    // Where reduce_loss writes this step's mean loss and accuracy.
    slot: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // samples × D
@group(0) @binding(2) var<storage, read> labels: array<u32>;     // samples
@group(0) @binding(3) var<storage, read> order: array<u32>;      // sample numbers
@group(0) @binding(4) var<storage, read> params: array<f32>;
@group(0) @binding(5) var<storage, read_write> grads: array<f32>;
@group(0) @binding(6) var<storage, read_write> hidden: array<f32>;   // batch × H, after ReLU
@group(0) @binding(7) var<storage, read_write> dlogits: array<f32>;  // batch × C
@group(0) @binding(8) var<storage, read_write> dhidden: array<f32>;  // batch × H
@group(0) @binding(9) var<storage, read_write> per_sample: array<vec2<f32>>; // (loss, correct)
@group(0) @binding(10) var<storage, read_write> results: array<vec2<f32>>;   // (mean loss, accuracy) per slot

// h[b][j] = relu(b1[j] + Σ_k x[s_b][k]·W1[k][j]); one invocation per (b, j).
@compute @workgroup_size(64)
fn forward_hidden(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= step.size * H {
        return;
    }
    let b = i / H;
    let j = i % H;
    let row = order[step.start + b] * D;
    var acc = params[B1_AT + j];
    for (var k = 0u; k < D; k++) {
        acc += x[row + k] * params[k * H + j];
    }
    hidden[i] = max(acc, 0.0);
}

// Logits, softmax, the sample's loss and dL/dz = (softmax − onehot) / batch;
// one invocation per sample.
@compute @workgroup_size(64)
fn forward_output(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if b >= step.size {
        return;
    }
    let label = labels[order[step.start + b]];
    var z: array<f32, C>;
    var best = 0u;
    for (var c = 0u; c < C; c++) {
        var acc = params[B2_AT + c];
        for (var j = 0u; j < H; j++) {
            acc += hidden[b * H + j] * params[W2_AT + j * C + c];
        }
        z[c] = acc;
        if acc > z[best] {
            best = c;
        }
    }
    let top = z[best];
    let label_logit = z[label] - top;
    var total = 0.0;
    for (var c = 0u; c < C; c++) {
        z[c] = exp(z[c] - top);
        total += z[c];
    }
    // −log softmax[label] = log Σ exp(z − top) − (z[label] − top).
    let loss = log(total) - label_logit;
    let scale = 1.0 / f32(step.size);
    for (var c = 0u; c < C; c++) {
        let onehot = select(0.0, 1.0, c == label);
        dlogits[b * C + c] = (z[c] / total - onehot) * scale;
    }
    per_sample[b] = vec2<f32>(loss, select(0.0, 1.0, best == label));
}

var<workgroup> partial: array<vec2<f32>, 256>;

// The batch's mean loss and accuracy into results[slot]: one workgroup.
@compute @workgroup_size(256)
fn reduce_loss(@builtin(local_invocation_index) t: u32) {
    var acc = vec2<f32>(0.0, 0.0);
    for (var b = t; b < step.size; b += 256u) {
        acc += per_sample[b];
    }
    partial[t] = acc;
    workgroupBarrier();
    for (var width = 128u; width > 0u; width >>= 1u) {
        if t < width {
            partial[t] += partial[t + width];
        }
        workgroupBarrier();
    }
    if t == 0u {
        results[step.slot] = partial[0] / f32(step.size);
    }
}

// dL/dW2[j][c] = Σ_b h[b][j]·dz[b][c] and dL/db2[c] = Σ_b dz[b][c]; one
// invocation per element of W2 and b2.
@compute @workgroup_size(64)
fn backward_output(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i < H * C {
        let j = i / C;
        let c = i % C;
        var acc = 0.0;
        for (var b = 0u; b < step.size; b++) {
            acc += hidden[b * H + j] * dlogits[b * C + c];
        }
        grads[W2_AT + i] = acc;
    } else if i < H * C + C {
        let c = i - H * C;
        var acc = 0.0;
        for (var b = 0u; b < step.size; b++) {
            acc += dlogits[b * C + c];
        }
        grads[B2_AT + c] = acc;
    }
}

// dL/dh_pre[b][j] = [h > 0]·Σ_c dz[b][c]·W2[j][c]; one invocation per (b, j).
@compute @workgroup_size(64)
fn backward_hidden(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= step.size * H {
        return;
    }
    let b = i / H;
    let j = i % H;
    var acc = 0.0;
    if hidden[i] > 0.0 {
        for (var c = 0u; c < C; c++) {
            acc += dlogits[b * C + c] * params[W2_AT + j * C + c];
        }
    }
    dhidden[i] = acc;
}

// dL/dW1[k][j] = Σ_b x[s_b][k]·dh[b][j] and dL/db1[j] = Σ_b dh[b][j]; one
// invocation per element of W1 and b1.
@compute @workgroup_size(64)
fn backward_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i < D * H {
        let k = i / H;
        let j = i % H;
        var acc = 0.0;
        for (var b = 0u; b < step.size; b++) {
            acc += x[order[step.start + b] * D + k] * dhidden[b * H + j];
        }
        grads[i] = acc;
    } else if i < D * H + H {
        let j = i - D * H;
        var acc = 0.0;
        for (var b = 0u; b < step.size; b++) {
            acc += dhidden[b * H + j];
        }
        grads[B1_AT + j] = acc;
    }
}
