// Least-squares ray intersection: the CUDA kernel of drrkit.triangulate (CuPy backend).
//
// Same formula and validity rule as the Numba kernel in drrkit/_triangulation_numba.py
// (the paper's Eq. 4-5); for each problem i with K rays a_k + t d_k, weights w_k:
//
//   1. c = weighted mean of the origins of the rays with w_k > 0;
//   2. n_k = d_k / |d_k|, S = sum w_k (I - n_k n_k^T), q = sum w_k (I - n_k n_k^T)(a_k - c);
//   3. x = adj(S) q / det(S), point = c + x;
//   4. valid when >= 2 rays have w_k > 0, all of them are finite with |d_k| > 0, and
//      det(S) >= limit * sum(w) * trace(adj S);
//   5. rms = sqrt(sum w_k |(I - n_k n_k^T)(c + x - a_k)|^2 / sum w_k).
//
// Thread mapping: one thread per problem in a grid-stride loop; the thread reads its
// K rays (contiguous, 3 K values per array) three times, the second and third time
// from cache. Layout: origins and directions (N, K, 3), weights (N, K), points (N, 3),
// rms (N,), status (N,) int8: 0 valid, 1 degenerate, 2 bad weight (negative or not
// finite).
//
// Compile-time options (#defines prepended by drrkit/cuda/_build.py):
//   DRRKIT_TRI_DOUBLE      1: float64 arrays; 0: float32.
//   DRRKIT_TRI_ACC_DOUBLE  1: accumulate in float64; 0: in the array type.
//                          (float64 arrays always accumulate in float64)
// Plain CUDA C++ without #include: it compiles with NVRTC, with nvcc, and (the tests
// do this) with a host C++ compiler given a few one-line definitions.

#ifndef DRRKIT_TRI_DOUBLE
#define DRRKIT_TRI_DOUBLE 1
#endif
#ifndef DRRKIT_TRI_ACC_DOUBLE
#define DRRKIT_TRI_ACC_DOUBLE 1
#endif

#if DRRKIT_TRI_DOUBLE
typedef double real_t;
#else
typedef float real_t;
#endif

#if DRRKIT_TRI_ACC_DOUBLE || DRRKIT_TRI_DOUBLE
typedef double acc_t;
#define ACC_SQRT sqrt
#else
typedef float acc_t;
#define ACC_SQRT sqrtf
#endif

#define TRI_VALID 0
#define TRI_DEGENERATE 1
#define TRI_BAD_WEIGHT 2

extern "C" __global__ void drr_triangulate(
    const real_t* __restrict__ origins,
    const real_t* __restrict__ directions,
    const real_t* __restrict__ weights,
    int has_weights,
    long long n_problems,
    int n_rays,
    double limit_in,
    real_t* __restrict__ points,
    real_t* __restrict__ rms,
    signed char* __restrict__ status)
{
    const acc_t zero = (acc_t)0;
    const acc_t one = (acc_t)1;
    const acc_t limit = (acc_t)limit_in;
    const real_t not_a_number = (real_t)nan("");
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n_problems;
         i += stride) {
        const real_t* o = origins + i * 3 * n_rays;
        const real_t* d = directions + i * 3 * n_rays;
        const real_t* wt = weights + i * n_rays;

        // pass 1: reference point, total weight, input checks
        acc_t total = zero, cx = zero, cy = zero, cz = zero;
        int count = 0;
        int code = TRI_VALID;
        for (int k = 0; k < n_rays; ++k) {
            acc_t w = has_weights ? (acc_t)wt[k] : one;
            if (!(w >= zero && w - w == zero)) { code = TRI_BAD_WEIGHT; break; }
            if (w == zero) continue;
            acc_t ax = (acc_t)o[3 * k], ay = (acc_t)o[3 * k + 1], az = (acc_t)o[3 * k + 2];
            acc_t dx = (acc_t)d[3 * k], dy = (acc_t)d[3 * k + 1], dz = (acc_t)d[3 * k + 2];
            acc_t norm2 = dx * dx + dy * dy + dz * dz;
            bool finite = (ax - ax == zero) && (ay - ay == zero) && (az - az == zero)
                          && (norm2 - norm2 == zero);
            if (!(finite && norm2 > zero)) code = TRI_DEGENERATE;
            total += w;
            count += 1;
            cx += w * ax;
            cy += w * ay;
            cz += w * az;
        }
        if (code == TRI_VALID && count < 2) code = TRI_DEGENERATE;

        acc_t x0 = zero, x1 = zero, x2 = zero;
        if (code == TRI_VALID) {
            cx /= total;
            cy /= total;
            cz /= total;
            // pass 2: normal equations about c
            acc_t s00 = zero, s01 = zero, s02 = zero, s11 = zero, s12 = zero, s22 = zero;
            acc_t q0 = zero, q1 = zero, q2 = zero;
            for (int k = 0; k < n_rays; ++k) {
                acc_t w = has_weights ? (acc_t)wt[k] : one;
                if (w == zero) continue;
                acc_t dx = (acc_t)d[3 * k], dy = (acc_t)d[3 * k + 1], dz = (acc_t)d[3 * k + 2];
                acc_t inv = one / ACC_SQRT(dx * dx + dy * dy + dz * dz);
                acc_t nx = dx * inv, ny = dy * inv, nz = dz * inv;
                acc_t ax = (acc_t)o[3 * k] - cx;
                acc_t ay = (acc_t)o[3 * k + 1] - cy;
                acc_t az = (acc_t)o[3 * k + 2] - cz;
                acc_t wx = w * nx, wy = w * ny, wz = w * nz;
                s00 += w - wx * nx;
                s11 += w - wy * ny;
                s22 += w - wz * nz;
                s01 -= wx * ny;
                s02 -= wx * nz;
                s12 -= wy * nz;
                acc_t along = nx * ax + ny * ay + nz * az;
                q0 += w * ax - wx * along;
                q1 += w * ay - wy * along;
                q2 += w * az - wz * along;
            }
            acc_t m00 = s11 * s22 - s12 * s12;
            acc_t m01 = s02 * s12 - s01 * s22;
            acc_t m02 = s01 * s12 - s02 * s11;
            acc_t m11 = s00 * s22 - s02 * s02;
            acc_t m12 = s01 * s02 - s00 * s12;
            acc_t m22 = s00 * s11 - s01 * s01;
            acc_t det = s00 * m00 + s01 * m01 + s02 * m02;
            if (!(det > zero && det >= limit * total * (m00 + m11 + m22))) {
                code = TRI_DEGENERATE;
            } else {
                x0 = (m00 * q0 + m01 * q1 + m02 * q2) / det;
                x1 = (m01 * q0 + m11 * q1 + m12 * q2) / det;
                x2 = (m02 * q0 + m12 * q1 + m22 * q2) / det;
            }
        }

        status[i] = (signed char)code;
        if (code != TRI_VALID) {
            points[3 * i] = not_a_number;
            points[3 * i + 1] = not_a_number;
            points[3 * i + 2] = not_a_number;
            rms[i] = not_a_number;
            continue;
        }
        // pass 3: perpendicular residuals
        acc_t sq = zero;
        for (int k = 0; k < n_rays; ++k) {
            acc_t w = has_weights ? (acc_t)wt[k] : one;
            if (w == zero) continue;
            acc_t dx = (acc_t)d[3 * k], dy = (acc_t)d[3 * k + 1], dz = (acc_t)d[3 * k + 2];
            acc_t ex = x0 - ((acc_t)o[3 * k] - cx);
            acc_t ey = x1 - ((acc_t)o[3 * k + 1] - cy);
            acc_t ez = x2 - ((acc_t)o[3 * k + 2] - cz);
            acc_t along = (dx * ex + dy * ey + dz * ez) / (dx * dx + dy * dy + dz * dz);
            acc_t px = ex - along * dx, py = ey - along * dy, pz = ez - along * dz;
            sq += w * (px * px + py * py + pz * pz);
        }
        points[3 * i] = (real_t)(cx + x0);
        points[3 * i + 1] = (real_t)(cy + x1);
        points[3 * i + 2] = (real_t)(cz + x2);
        rms[i] = (real_t)ACC_SQRT(sq / total);
    }
}
