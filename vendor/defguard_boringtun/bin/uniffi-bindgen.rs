fn main() {
    // uniffi::uniffi_bindgen_main();
    uniffi::uniffi_bindgen_swift();
}
