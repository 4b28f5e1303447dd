{
  "targets": [
    {
      "target_name": "diffswap_native",
      "sources": ["src/addon.cc", "src/pages.cc", "src/host.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags": ["-O3", "-Wall", "-Wextra"],
      "cflags_cc": ["-O3", "-Wall", "-Wextra", "-std=c++17"]
    }
  ]
}
