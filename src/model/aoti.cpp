// C functions over libtorch's AOTInductor package loader, which tch does not bind. Tensors cross
// as `at::Tensor*`, the representation tch's own C layer uses, so tch takes ownership of results.
// Every C++ exception becomes an error string the caller frees with siglip_aoti_free_error
// (libtorch's own errors without their C++ backtrace: a person reads these).

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>

using torch::inductor::AOTIModelPackageLoader;

namespace {
char *error_string(const std::exception &e) {
  if (auto *torch_error = dynamic_cast<const c10::Error *>(&e)) {
    return strdup(torch_error->what_without_backtrace());
  }
  return strdup(e.what());
}
} // namespace

extern "C" {

void *siglip_aoti_load(const char *path, int device_index, char **error) {
  try {
    return new AOTIModelPackageLoader(path, "model", /*run_single_threaded=*/false,
                                      /*num_runners=*/1,
                                      static_cast<c10::DeviceIndex>(device_index));
  } catch (const std::exception &e) {
    *error = error_string(e);
    return nullptr;
  }
}

at::Tensor *siglip_aoti_run(void *loader, const at::Tensor *input, char **error) {
  try {
    auto outputs = static_cast<AOTIModelPackageLoader *>(loader)->run({*input});
    if (outputs.size() != 1) {
      throw std::runtime_error("the compiled tower returned " + std::to_string(outputs.size()) +
                               " tensors, expected 1");
    }
    return new at::Tensor(std::move(outputs[0]));
  } catch (const std::exception &e) {
    *error = error_string(e);
    return nullptr;
  }
}

void siglip_aoti_free(void *loader) { delete static_cast<AOTIModelPackageLoader *>(loader); }

void siglip_aoti_free_error(char *error) { std::free(error); }
}
