// pipeline/vision/tta: the 8 dihedral transforms against index formulas written out by hand
// and against torch.rot90/torch.flip in Python (Debian's python3-torch).

#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "pipeline/vision/tta.h"
#include "test_support.h"

namespace attnscope {
namespace {

using pipeline::dihedral_inverse;
using pipeline::dihedral_transform;
using pipeline::kDihedralCount;

/// Brute force: where output pixel (i, j) of transform k comes from in an (H, W) input.
/// A counter-clockwise quarter turn of an (h, w) image gives a (w, h) image with
/// out[i][j] = in[j][w - 1 - i]; the flip is out[i][j] = in[i][w - 1 - j].
torch::Tensor by_formula(const torch::Tensor& x, int64_t k) {
  auto cur = x.clone();
  if (k >= 4) {
    auto f = torch::empty_like(cur);
    const int64_t h = cur.size(-2), w = cur.size(-1);
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j)
        f.select(-2, i).select(-1, j).copy_(cur.select(-2, i).select(-1, w - 1 - j));
    cur = f;
  }
  for (int64_t t = 0; t < k % 4; ++t) {
    const int64_t h = cur.size(-2), w = cur.size(-1);
    auto sizes = cur.sizes().vec();
    sizes[sizes.size() - 2] = w;
    sizes[sizes.size() - 1] = h;
    auto r = torch::empty(sizes, cur.options());
    for (int64_t i = 0; i < w; ++i)
      for (int64_t j = 0; j < h; ++j)
        r.select(-2, i).select(-1, j).copy_(cur.select(-2, j).select(-1, w - 1 - i));
    cur = r;
  }
  return cur;
}

TEST(Tta, InverseUndoesEachTransform) {
  const auto x = torch::randn({2, 3, 5, 7});  // non-square: odd turns swap H and W
  for (int64_t k = 0; k < kDihedralCount; ++k) {
    const auto y = dihedral_transform(x, k);
    EXPECT_EQ(y.size(-2), k % 2 ? 7 : 5) << k;
    EXPECT_TRUE(torch::equal(dihedral_inverse(y, k), x)) << pipeline::dihedral_name(k);
  }
  // Maps of (B, h, w) and (B, 1, h, w).
  const auto m = torch::randn({2, 4, 6});
  for (int64_t k = 0; k < kDihedralCount; ++k) {
    EXPECT_TRUE(torch::equal(dihedral_inverse(dihedral_transform(m, k), k), m));
    const auto m1 = m.unsqueeze(1);
    EXPECT_TRUE(torch::equal(dihedral_inverse(dihedral_transform(m1, k), k), m1));
  }
}

TEST(Tta, TheEightAreDistinctAndMatchTheFormulas) {
  const auto x = torch::arange(2 * 3 * 4 * 4, torch::kFloat).reshape({2, 3, 4, 4});
  std::vector<torch::Tensor> all;
  for (int64_t k = 0; k < kDihedralCount; ++k) {
    const auto y = dihedral_transform(x, k);
    EXPECT_TRUE(torch::equal(y, by_formula(x, k))) << pipeline::dihedral_name(k);
    for (const auto& other : all)
      EXPECT_FALSE(torch::equal(y, other)) << k;
    all.push_back(y);
  }
  EXPECT_TRUE(torch::equal(all[0], x));
}

TEST(Tta, MatchesTorchRot90AndFlipInPython) {
  test::TempDir dir;
  const std::string script =
      "import torch\n"
      "x = torch.arange(1 * 2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)\n"
      "with open('" +
      (dir / "out.txt") +
      "', 'w') as f:\n"
      "    for k in range(8):\n"
      "        y = torch.flip(x, [-1]) if k >= 4 else x\n"
      "        y = torch.rot90(y, k % 4, dims=(-2, -1))\n"
      "        f.write(' '.join(str(int(v)) for v in y.flatten().tolist()) + '\\n')\n";
  std::ofstream(dir / "t.py") << script;
  const auto r = test::run_process(test::python() + " " + (dir / "t.py"));
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream in(dir / "out.txt");
  const auto x = torch::arange(1 * 2 * 3 * 5, torch::kFloat).reshape({1, 2, 3, 5});
  for (int64_t k = 0; k < kDihedralCount; ++k) {
    const auto y = dihedral_transform(x, k).contiguous();
    for (int64_t i = 0; i < y.numel(); ++i) {
      int64_t v = -1;
      in >> v;
      ASSERT_EQ(v, static_cast<int64_t>(y.flatten()[i].item<float>()))
          << "transform " << k << " element " << i;
    }
  }
}

TEST(Tta, MeansMapBackBeforeAveraging) {
  // A "model" that returns its input's first channel as a map: after mapping back, all 8 equal
  // the original, so their mean is the original.
  const auto x = torch::randn({2, 3, 6, 6});
  std::vector<torch::Tensor> maps;
  for (int64_t k = 0; k < kDihedralCount; ++k)
    maps.push_back(dihedral_transform(x, k).select(1, 0));
  EXPECT_TRUE(torch::allclose(pipeline::mean_of_inverted_maps(maps), x.select(1, 0)));
  // tta_mean: the mean of a function over the 8 transforms, here the sum over each image's
  // pixels (invariant) and the top-left pixel (not): brute-force means.
  const auto out = pipeline::tta_mean([](const torch::Tensor& t) { return t.sum({1, 2, 3}); }, x);
  EXPECT_TRUE(torch::allclose(out, x.sum({1, 2, 3}), 1e-5, 1e-4));
  const auto corner = pipeline::tta_mean(
      [](const torch::Tensor& t) { return t.select(1, 0).select(1, 0).select(1, 0); }, x);
  const auto c = x.select(1, 0);
  const auto want = (2 * c.select(1, 0).select(1, 0) + 2 * c.select(1, 0).select(1, 5) +
                     2 * c.select(1, 5).select(1, 0) + 2 * c.select(1, 5).select(1, 5)) /
                    8;
  EXPECT_TRUE(torch::allclose(corner, want, 1e-6, 1e-6));
  EXPECT_NE(test::error_of([&] { pipeline::mean_of_inverted_maps({x}); }), "");
  EXPECT_NE(test::error_of([&] { dihedral_transform(x, 8); }), "");
}

}  // namespace
}  // namespace attnscope
