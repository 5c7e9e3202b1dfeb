"""The helper layer of archs/: every block, function and detector helper that more than one family uses lives here,
written once (like timm's `layers`). Family modules import from these modules and never from each other.

Module map (public names):
* `detect`: the detectors' helpers. `same_keys_and_shapes` (the meta-device rebuild check), `rebuilds`,
  `BUILD_ERRORS`, `shapes`, `seq_lengths`, `list_length`, `count_indexed`, `buffer_value`, pixel-shuffle heads
  `pixel_shuffle_scale` / `scale_and_out_channels`, `read_swinir_head`, `ratio_for`.
* `padding`: `pad_to_multiple(x, multiple, *, mode, min_size=0)` with mode "zeros", "reflect", "replicate" or
  "reflect_or_replicate"; `padded_size`, `PadMode`.
* `precision`: `LOW_PRECISION`, `is_low_precision`, `upcast`, `f32`, `float32_region`, `conv32`, `batch_norm32`.
* `fft`: `rfft2_interleaved`, `irfft2_interleaved` (spectra as channel pairs).
* `norm`: `LayerNorm2d` (NAFNet/BasicSR; its function `channel_layer_norm`), `RestormerLayerNorm` (+
  `WithBiasLayerNorm`, `BiasFreeLayerNorm`, `LAYER_NORM_TYPES`), `RMSNorm2d`.
* `drop`: `DropPath`, `drop_path`.
* `window`: Swin-style `window_partition`, `window_reverse`, `relative_position_index`, `relative_position_bias`,
  `shifted_window_mask`.
* `window_attention`: Swin's `WindowAttention` (relative position bias; own index buffer or a shared one),
  `window_sdpa` (bias + per-window mask through SDPA), the transformer `Mlp`, SwinIR's `PatchEmbed` (ESRGAN+-era
  families of wave 2: FAT, CFAT, MicroSR, OAPT).
* `upsample`: `Upsample`, `UpsampleOneStep` (SwinIR pixel-shuffle heads), `DySample`, `is_pow2`,
  `unsupported_scale`.
* `reparam`: `Reparameterizable` (fuse on eval and after load), `fusion_dtype`, `set_fused`, `to_plain`,
  `from_plain`, `Conv3XC` (SPAN's re-parameterisable 3x3).
* `naf`: NAFNet's `NAFBlock`, `SimpleGate`, `dropout_or_identity`, and the NAFNet-style U-Net helpers
  `unet_levels`, `unet_context`, `unet_layout`.
* `tlc`: Test-time Local Converter, `LocalAvgPool2d`, `localize`, `default_base_size`.
* `restormer`: MDTA `Attention`, `channel_attention`, GDFN `FeedForward`, `TransformerBlock`, `transformer_stage`,
  `OverlapPatchEmbed`, `Downsample`, `Upsample`, the U-Net skeleton `RestormerUNet`, `unet_radius`,
  `GLOBAL_CONTEXT_CAP`, `ffn_factor`.
* `deform`: modulated deformable convolution `deform_conv2d` (torchvision's where it loads, else
  `deform_conv2d_reference`, the same arithmetic in PyTorch), BasicSR's `DCNv2Pack` and `flow_warp` (OSRT).
* `posbias`: `DynamicPosBias` (CrossFormer's MLP position bias: DAT, HiT-SRF) and its `offset_table`.
* `kernel_prior`: UFPNet's kernel estimator `code_extra_mean_var`, flow prior `KernelPrior`, `kernel_maps` (both,
  as image-shaped maps), `kernel_attention`, `NAFBlock_kernel`, `FLOW_KERNEL_SIZE`.
* `swin`: the SwinIR/HAT line's blocks: `Mlp`, `ChannelAttention`, `CAB`, `PatchEmbed`, `patch_unembed`,
  `block_window`, `attend`, `WindowAttention`, `shifted_window_attention`, `OCAB`, `oca_relative_position_index`,
  and HAT's residual hybrid attention group `HAB`, `AttenBlocks`, `RHAG`, `resi_conv` (HAT family, MSHAT).
* `ss2d`: VMamba's `SS2D` 2-D selective scan (ConvMambaSR, HATM).
* `uniupsample`: umzi's `UniUpsample` (versions 1 and 2, `MetaUpsample` record, `keep_own_meta`), `SAMPLE_MODS`,
  `read_uniupsample` (its kwargs from a state dict), `uniupsample_radius`, `dysample_groups_ok` (RHA, MoSRv2, MoESR,
  ESCRealM).
* `mambaout`: MambaOut's `GatedCNNBlock` (LayerNorm2d or RMSNorm2d) and `InceptionDWConv2d` (MoSRv2, MoESR).
* `magic_kernel`: Magic Kernel Sharp 2021 taps `MAGIC_KERNEL`, `MAGIC_SHARP_2021`, `separable_convs` (the fixed
  depthwise h/v pair), `nearest_upscale` (ParagonSR, ParagonSR2).
* `branch_fusion`: `center_pad`, `sum_branches`: parallel same-padded conv branches summed into one conv
  (ParagonSR's ReparamConvV2, Aether's ReparamLargeKernelConv).
"""
