// Ray-marching kernels of the drrkit CUDA backend.
//
// The ray rule is the one written in drrkit/_cpu.py (the Numba backend); this file
// follows it operation by operation, in float32:
//
//   1. Pixel (c, r) of view k: the ray starts at the source S and points at
//      D0 + c u + r v (all in continuous voxel index space, from prepare_rays);
//      the volume is the box [-0.5, n - 0.5] along each index axis.
//   2. Slab clipping gives the ray parameters [a0, a1], a0 >= 0 (point = S + a d).
//   3. The chord (a1 - a0) |d|_mm is cut into N = ceil(chord / step - slack) equal
//      pieces of h = chord / N mm (slack = DRRKIT_PIECE_SLACK, the CPU's PIECE_SLACK);
//      the volume is sampled at each piece's midpoint p_m = p_0 + m q (no accumulated
//      drift) and the integral is h * sum.
//
// Two samplers share the marcher:
//   * GlobalSampler: trilinear interpolation from global memory in float32, with
//     coordinates clamped to the voxel centres (edge voxels extend to the box faces),
//     exactly as the CPU backend.
//   * TexSampler<TexFetch>: hardware trilinear filtering of a 3-D CUDA array
//     (cudaFilterModeLinear, cudaAddressModeClamp, unnormalised coordinates). The
//     texel centre of voxel i sits at texture coordinate i + 0.5, so the sampler adds
//     0.5; clamp addressing then repeats the edge voxels, which is the same
//     clamp-to-centre rule. The hardware stores the interpolation weights in 9-bit
//     fixed point (8 fractional bits), hence the texture path's small extra error.
//
// Thread mapping: one thread per detector pixel; blockIdx.z is the view (offset by
// view_offset so more than 65535 views can be rendered in several launches).
// Per-view parameters: a (K, 21) float32 device buffer laid out as prepare_rays in
// drrkit/_cpu.py: source (3), pixel (0, 0) (3), per column (3), per row (3), metric
// G = M^T M (9, row-major).
//
// Compile-time options (#defines prepended by drrkit/cuda/_build.py):
//   DRRKIT_HALF     1: the global-memory kernel reads IEEE binary16 voxels; 0: float32.
//   DRRKIT_INDEX64  1: 64-bit voxel offsets (volumes of 2^31 voxels or more).
//   DRRKIT_PIECE_SLACK  float: slack in the piece count (drrkit._cpu.PIECE_SLACK).
// The file compiles with NVRTC (no #include needed) and with nvcc.

#ifndef DRRKIT_HALF
#define DRRKIT_HALF 0
#endif
#ifndef DRRKIT_INDEX64
#define DRRKIT_INDEX64 0
#endif
#ifndef DRRKIT_PIECE_SLACK
#define DRRKIT_PIECE_SLACK 1e-3f
#endif

#define DRRKIT_VIEW_FLOATS 21
#define DRRKIT_HD __host__ __device__ __forceinline__

#if DRRKIT_INDEX64
typedef long long drr_index;
#else
typedef int drr_index;
#endif

#if DRRKIT_HALF
typedef unsigned short drr_voxel;  // IEEE binary16 bits
#else
typedef float drr_voxel;
#endif

DRRKIT_HD float drr_fmin(float a, float b) { return a < b ? a : b; }
DRRKIT_HD float drr_fmax(float a, float b) { return a > b ? a : b; }
DRRKIT_HD int drr_imin(int a, int b) { return a < b ? a : b; }
DRRKIT_HD int drr_imax(int a, int b) { return a > b ? a : b; }

DRRKIT_HD float voxel_to_float(float v) { return v; }

DRRKIT_HD float voxel_to_float(unsigned short bits) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
    return f;
#else
    // host build (tests only): decode binary16 by hand
    const int sign = bits >> 15, exponent = (bits >> 10) & 31, mantissa = bits & 1023;
    float magnitude;
    if (exponent == 0) {
        magnitude = mantissa * (1.0f / 16777216.0f);  // subnormal: m * 2^-24
    } else if (exponent == 31) {
        magnitude = mantissa ? __builtin_nanf("") : __builtin_inff();
    } else {
        magnitude = (1024 + mantissa) * (1.0f / 1024.0f);
        int e = exponent - 15;
        for (; e > 0; --e) magnitude *= 2.0f;
        for (; e < 0; ++e) magnitude *= 0.5f;
    }
    return sign ? -magnitude : magnitude;
#endif
}

template <class T>
DRRKIT_HD T load_voxel(const T* p) {
#ifdef __CUDA_ARCH__
    return __ldg(p);
#else
    return *p;
#endif
}

// Trilinear interpolation from a (Z, Y, X) C-ordered volume in global memory.
struct GlobalSampler {
    const drr_voxel* __restrict__ vol;
    float hx, hy, hz;        // largest voxel-centre coordinate per axis (n - 1)
    int mx, my, mz;          // largest lower corner per axis (max(n - 2, 0))
    drr_index sy, sz;        // strides of j and k in voxels
    drr_index ox, oy, oz;    // offsets to the upper corner (0 along a 1-voxel axis)

    DRRKIT_HD GlobalSampler(const drr_voxel* v, int nx, int ny, int nz)
        : vol(v),
          hx((float)(nx - 1)), hy((float)(ny - 1)), hz((float)(nz - 1)),
          mx(drr_imax(nx - 2, 0)), my(drr_imax(ny - 2, 0)), mz(drr_imax(nz - 2, 0)),
          sy((drr_index)nx), sz((drr_index)nx * (drr_index)ny),
          ox(nx > 1 ? 1 : 0), oy(ny > 1 ? (drr_index)nx : 0),
          oz(nz > 1 ? (drr_index)nx * (drr_index)ny : 0) {}

    DRRKIT_HD float operator()(float x, float y, float z) const {
        x = drr_fmin(drr_fmax(x, 0.0f), hx);
        y = drr_fmin(drr_fmax(y, 0.0f), hy);
        z = drr_fmin(drr_fmax(z, 0.0f), hz);
        const int i = drr_imin((int)x, mx);
        const int j = drr_imin((int)y, my);
        const int k = drr_imin((int)z, mz);
        const float fx = x - (float)i;
        const float fy = y - (float)j;
        const float fz = z - (float)k;
        const drr_voxel* b = vol + ((drr_index)k * sz + (drr_index)j * sy + (drr_index)i);
        const float v000 = voxel_to_float(load_voxel(b));
        const float v100 = voxel_to_float(load_voxel(b + ox));
        const float v010 = voxel_to_float(load_voxel(b + oy));
        const float v110 = voxel_to_float(load_voxel(b + oy + ox));
        const float v001 = voxel_to_float(load_voxel(b + oz));
        const float v101 = voxel_to_float(load_voxel(b + oz + ox));
        const float v011 = voxel_to_float(load_voxel(b + oz + oy));
        const float v111 = voxel_to_float(load_voxel(b + oz + oy + ox));
        const float c00 = v000 + fx * (v100 - v000);
        const float c10 = v010 + fx * (v110 - v010);
        const float c01 = v001 + fx * (v101 - v001);
        const float c11 = v011 + fx * (v111 - v011);
        const float c0 = c00 + fy * (c10 - c00);
        const float c1 = c01 + fy * (c11 - c01);
        return c0 + fz * (c1 - c0);
    }
};

// Hardware-filtered sampler: Fetch(u, v, w) must behave as tex3D<float> with linear
// filtering and clamp addressing in unnormalised texel coordinates.
template <class Fetch>
struct TexSampler {
    Fetch fetch;
#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
    DRRKIT_HD float operator()(float x, float y, float z) const {
        return fetch(x + 0.5f, y + 0.5f, z + 0.5f);
    }
};

// Clip the ray s + a d (a >= 0) against the slab [-0.5, n - 0.5] of one axis.
DRRKIT_HD void clip_axis(float s, float d, float hi, float& a0, float& a1) {
    const float lo = -0.5f;
    if (d != 0.0f) {
        const float inv = 1.0f / d;
        const float ta = (lo - s) * inv;
        const float tb = (hi - s) * inv;
        a0 = drr_fmax(a0, drr_fmin(ta, tb));
        a1 = drr_fmin(a1, drr_fmax(ta, tb));
    } else if (s < lo || s > hi) {
        a1 = -1.0f;
    }
}

// Line integral (mu * mm) along the ray of pixel (c, r) of one view.
#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <class Sampler>
DRRKIT_HD float march_ray(const Sampler& sample, const float* __restrict__ view, int c,
                          int r, float step, int nx, int ny, int nz) {
    const float s0 = view[0], s1 = view[1], s2 = view[2];
    const float rf = (float)r, cf = (float)c;
    // direction in index space (not normalised): pixel centre minus source
    const float d0 = (view[3] + rf * view[9] - s0) + cf * view[6];
    const float d1 = (view[4] + rf * view[10] - s1) + cf * view[7];
    const float d2 = (view[5] + rf * view[11] - s2) + cf * view[8];
    // world length of the index-space vector d: |d|_mm = sqrt(d^T G d)
    const float g0 = view[12] * d0 + view[13] * d1 + view[14] * d2;
    const float g1 = view[15] * d0 + view[16] * d1 + view[17] * d2;
    const float g2 = view[18] * d0 + view[19] * d1 + view[20] * d2;
    const float length_mm = sqrtf(d0 * g0 + d1 * g1 + d2 * g2);

    float a0 = 0.0f, a1 = 3.0e38f;
    clip_axis(s0, d0, (float)nx - 0.5f, a0, a1);
    clip_axis(s1, d1, (float)ny - 0.5f, a0, a1);
    clip_axis(s2, d2, (float)nz - 0.5f, a0, a1);
    if (!(a1 > a0)) return 0.0f;

    const float chord_mm = (a1 - a0) * length_mm;
    // piece count (the host keeps it below 2^24)
    const int n = drr_imax(1, (int)ceilf(chord_mm / step - (float)DRRKIT_PIECE_SLACK));
    const float nf = (float)n;
    const float da = (a1 - a0) / nf;
    const float h_mm = chord_mm / nf;
    // midpoint of the first piece, then one step per piece
    const float a_mid = a0 + 0.5f * da;
    const float p0 = s0 + a_mid * d0, p1 = s1 + a_mid * d1, p2 = s2 + a_mid * d2;
    const float q0 = da * d0, q1 = da * d1, q2 = da * d2;
    float acc = 0.0f;
    float mf = 0.0f;
    for (int m = 0; m < n; ++m) {
        acc += sample(p0 + mf * q0, p1 + mf * q1, p2 + mf * q2);
        mf += 1.0f;
    }
    return acc * h_mm;
}

#ifdef __CUDACC__

struct TexFetch {
    cudaTextureObject_t tex;
    __device__ __forceinline__ float operator()(float u, float v, float w) const {
        return tex3D<float>(tex, u, v, w);
    }
};

// Exact path: trilinear interpolation from global memory.
// vol: (nz, ny, nx) voxels; views: (n_views, 21) float32; out: (n_views, height, width).
extern "C" __global__ void drr_march_global(
    const drr_voxel* __restrict__ vol, const float* __restrict__ views,
    float* __restrict__ out, int n_views, int height, int width, int nx, int ny, int nz,
    float step, int view_offset) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int r = blockIdx.y * blockDim.y + threadIdx.y;
    const int k = blockIdx.z + view_offset;
    if (c >= width || r >= height || k >= n_views) return;
    const GlobalSampler sampler(vol, nx, ny, nz);
    const float value = march_ray(sampler, views + (long long)k * DRRKIT_VIEW_FLOATS, c, r,
                                  step, nx, ny, nz);
    out[((long long)k * height + r) * width + c] = value;
}

// Fast path: hardware trilinear filtering of a 3-D texture (float32 or float16 texels).
extern "C" __global__ void drr_march_texture(
    cudaTextureObject_t tex, const float* __restrict__ views, float* __restrict__ out,
    int n_views, int height, int width, int nx, int ny, int nz, float step,
    int view_offset) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int r = blockIdx.y * blockDim.y + threadIdx.y;
    const int k = blockIdx.z + view_offset;
    if (c >= width || r >= height || k >= n_views) return;
    TexSampler<TexFetch> sampler;
    sampler.fetch.tex = tex;
    const float value = march_ray(sampler, views + (long long)k * DRRKIT_VIEW_FLOATS, c, r,
                                  step, nx, ny, nz);
    out[((long long)k * height + r) * width + c] = value;
}

// Texture-filtering floor for the benchmark: every thread of a width x height grid
// takes n_samples filtered samples evenly spread along z through the volume (straight,
// perfectly coherent rays with no clipping arithmetic). out: (height, width).
extern "C" __global__ void drr_texture_floor(
    cudaTextureObject_t tex, float* __restrict__ out, int height, int width, int nx,
    int ny, int nz, int n_samples) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int r = blockIdx.y * blockDim.y + threadIdx.y;
    if (c >= width || r >= height) return;
    const float u = ((float)c + 0.5f) * ((float)nx / (float)width);
    const float v = ((float)r + 0.5f) * ((float)ny / (float)height);
    const float dz = (float)nz / (float)n_samples;
    float acc = 0.0f;
    for (int m = 0; m < n_samples; ++m) {
        acc += tex3D<float>(tex, u, v, ((float)m + 0.5f) * dz);
    }
    out[(long long)r * width + c] = acc;
}

#endif  // __CUDACC__
