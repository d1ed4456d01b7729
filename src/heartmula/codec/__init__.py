"""HeartCodec: codes <-> 48 kHz stereo audio (official decoder, windowed and streaming decode, trainable encoder).

    codec = load_codec("ckpt")                      # ROOT with HeartCodec-oss/, or a codec folder
    audio, rate = codec.decode(codes)               # codes [8, T] -> float32 [2, T * 3840], 48000
    codes = codec.encode(audio, rate)               # needs a codec with a trained code_encoder
"""

from heartmula.codec.config import HeartCodecConfig
from heartmula.codec.decoding import DecodeOptions, StreamingDecoder
from heartmula.codec.model import HeartCodec
from heartmula.codec.pretrained import load_codec, locate_codec

__all__ = ["DecodeOptions", "HeartCodec", "HeartCodecConfig", "StreamingDecoder", "load_codec", "locate_codec"]
