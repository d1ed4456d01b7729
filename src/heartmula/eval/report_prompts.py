"""The report's fixed prompt set: songs in five languages and instrumentals, their tags, and the
derangement that pairs each prompt with another prompt's tags."""

from __future__ import annotations

from dataclasses import dataclass

from heartmula.errors import HeartMuLaError

REPORT_VERSION = "heartmula-report-v1"
LANGUAGES = ("en", "zh", "ja", "ko", "es")
INSTRUMENTAL = "instrumental"
# Headline lyric unit per language: words where the script separates them, characters where it does not (ko words
# are space-separated, but syllable blocks carry the sound, and a one-block slip should not cost a whole word).
HEADLINE_UNIT = {"en": "wer", "es": "wer", "zh": "cer", "ja": "cer", "ko": "cer"}
NO_LYRICS_SUFFIX = "-nolyrics"  # id suffix of a vocal prompt's song generated again with empty lyrics


@dataclass(frozen=True)
class Prompt:
    id: str
    language: str | None  # None: instrumental (empty lyrics)
    tags: str  # in the corpus' order: style, instruments, mood, tempo, vocal, language, key
    lyrics: str = ""

    @property
    def tag_list(self) -> list[str]:
        return [t.strip() for t in self.tags.split(",") if t.strip()]

    @property
    def tempo(self) -> str | None:
        """The tempo tag (slow < 80 BPM, moderate, fast >= 115 BPM in the corpus), or None."""
        return next((t for t in self.tag_list if t in ("slow", "moderate", "fast")), None)

    @property
    def drums(self) -> bool:
        return "drums" in self.tag_list


# The fixed prompt set. Never edit a prompt in place: runs are compared across model versions; add new ones and
# bump REPORT_VERSION. Tags use only the corpus engine's vocabulary (heartmula.data.corpus.song_tags: the styles'
# real instrument sets and tempo ranges, so "rock" comes with electric guitar, bass, drums and is fast). The first
# prompt of each language is what --quick runs; they alternate slow / fast so a quick run still has both. The
# lyrics are short (about 30 sung syllables) so a 30 s song can hold them at the corpus' one syllable per note.
PROMPTS: tuple[Prompt, ...] = (
    Prompt("en-ballad", "en", "ballad,piano,strings,calm,slow,female vocal,english,c major",
           "[verse]\nthe morning light is on the hill\ni hear the river running still\n\n"
           "[chorus]\nstay with me until the night\nsing with me and hold me tight"),
    Prompt("en-rock", "en", "rock,electric guitar,bass,drums,energetic,fast,male vocal,english,e major",
           "[verse]\nwe run along the empty road\nthe city lights are burning gold\n\n"
           "[chorus]\nraise your voice and let it ring\ntonight we are the ones who sing"),
    Prompt("en-folk", "en", "folk,flute,acoustic guitar,bass,drums,happy,moderate,female vocal,english,g major",
           "[verse]\ndown by the meadow where the grass grows tall\nmy father sang it every fall\n\n"
           "[chorus]\nsing it high and sing it low\nhome is where the rivers flow"),
    Prompt("zh-rock", "zh", "rock,electric guitar,bass,drums,energetic,fast,male vocal,chinese,d major",
           "[verse]\n夜里的风吹过城市\n我们一起向前奔跑\n\n[chorus]\n燃烧吧我的心\n唱出明天的歌"),
    Prompt("zh-ballad", "zh", "ballad,piano,strings,romantic,slow,female vocal,chinese,f major",
           "[verse]\n月光照在小河上\n你的笑容在心里\n\n[chorus]\n我会一直等着你\n直到花开的季节"),
    Prompt("zh-pop", "zh", "pop,synthesizer,electric piano,bass,drums,uplifting,fast,female vocal,chinese,a major",
           "[verse]\n阳光洒满了街道\n每个人都在微笑\n\n[chorus]\n跟我一起唱\n快乐就在今天"),
    Prompt("ja-hymn", "ja", "hymn,organ,peaceful,slow,female vocal,japanese,g major",
           "[verse]\nしずかな朝に鳥がうたう\nやさしい光が空にひろがる\n\n[chorus]\nありがとうこの日に\nこころからうたおう"),
    Prompt("ja-electronic", "ja", "electronic,synthesizer,synth bass,drums,intense,fast,male vocal,japanese,a minor",
           "[verse]\n夜の街をかけぬけて\n光の中でおどりだす\n\n[chorus]\n止まらないこのリズム\nいつまでも歌いたい"),
    Prompt("ja-classical", "ja", "classical,violin,viola,cello,strings,melancholic,slow,male vocal,japanese,d minor",
           "[verse]\n遠い海の波の音\nひとりきりで聞いている\n\n[chorus]\nさよならは言わないで\nまた会える日まで"),
    Prompt("ko-electronic", "ko", "electronic,synthesizer,synth bass,drums,happy,fast,female vocal,korean,c major",
           "[verse]\n밤하늘에 별이 빛나\n우리 함께 춤을 춰요\n\n[chorus]\n멈추지 마 이 노래\n끝까지 함께 가요"),
    Prompt("ko-ballad", "ko", "ballad,piano,sad,slow,male vocal,korean,a minor",
           "[verse]\n비 오는 거리에 서서\n너의 이름을 불러\n\n[chorus]\n보고 싶어 너를\n다시 만날 수 있을까"),
    Prompt("ko-folk", "ko", "folk,flute,acoustic guitar,bass,drums,uplifting,moderate,female vocal,korean,d major",
           "[verse]\n푸른 들판 바람 불어\n작은 꽃이 노래해요\n\n[chorus]\n웃으며 걸어가요\n내일은 더 밝을 거야"),
    Prompt("es-rock", "es", "rock,electric guitar,bass,drums,happy,fast,female vocal,spanish,g major",
           "[verse]\ncorremos por la calle gris\nel fuego vive en mi voz\n\n"
           "[chorus]\ncanta conmigo esta noche\nnadie nos puede parar"),
    Prompt("es-ballad", "es", "ballad,piano,strings,melancholic,slow,male vocal,spanish,e minor",
           "[verse]\nla luna duerme sobre el mar\ny tu recuerdo vuelve a mí\n\n"
           "[chorus]\nno me olvides amor\nte esperaré aquí"),
    Prompt("es-pop", "es", "pop,synthesizer,electric piano,bass,strings,drums,uplifting,moderate,male vocal,spanish,"
           "bb major",
           "[verse]\nel sol despierta la ciudad\nbailamos juntos sin pensar\n\n"
           "[chorus]\nven y canta hoy\nla vida es una canción"),
    Prompt("inst-ballad", None, "ballad,piano,strings,peaceful,slow,instrumental,f major"),
    Prompt("inst-electronic", None, "electronic,synthesizer,synth bass,drums,energetic,fast,instrumental,d major"),
    Prompt("inst-classical", None, "classical,violin,viola,cello,strings,dark,slow,instrumental,c minor"),
)


def select_prompts(languages: str | None = None, quick: bool = False) -> list[Prompt]:
    """The prompts of the chosen languages ("instrumental" for the instrumentals), in PROMPTS order; quick: the
    first prompt of each."""
    known = (*LANGUAGES, INSTRUMENTAL)
    if languages is None:
        chosen = set(known)
    else:
        chosen = {x.strip().lower() for x in languages.split(",") if x.strip()}
        unknown = sorted(chosen - set(known))
        if unknown or not chosen:
            raise HeartMuLaError(f"--languages takes a comma-separated subset of {','.join(known)}; got "
                                 f"{languages!r}" + (f" ({', '.join(unknown)} unknown)" if unknown else ""))
    prompts, seen = [], set()
    for prompt in PROMPTS:
        group = prompt.language or INSTRUMENTAL
        if group not in chosen or (quick and group in seen):
            continue
        seen.add(group)
        prompts.append(prompt)
    return prompts


def tag_set(tags: str) -> frozenset[str]:
    return frozenset(t.strip() for t in tags.split(",") if t.strip())


def shuffled_partners(tags: list[str]) -> list[int | None]:
    """For song i (of tag strings `tags`), the index of the song whose tags serve as its shuffled-tag baseline:
    i + n//2 (mod n), a fixed derangement that never pairs a song with itself and spreads partners across languages
    and styles; moved on when the partner happens to have the same tags. None when no other song has other tags."""
    n = len(tags)
    partners: list[int | None] = []
    for i in range(n):
        partner = None
        for step in range(n - 1):
            j = (i + max(1, n // 2) + step) % n
            if j != i and tag_set(tags[j]) != tag_set(tags[i]):
                partner = j
                break
        partners.append(partner)
    return partners
