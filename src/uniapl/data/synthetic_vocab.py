"""Word lists and sentence templates of the bundled synthetic instruction-following task.

Everything the generator in `uniapl.data.synthetic` can write comes from here, so the vocabulary
stays small and closed (a few hundred words) and a tiny model can learn the task in minutes.

Invariants the generator relies on (checked by the tests):

* every word is plain ASCII letters; keywords, synonyms and alternative names are single words;
* no keyword is a substring of any other word the generator can write (IFEval's
  ``keywords:existence`` is a case-insensitive substring search), so a missing keyword is missing;
* synonyms and alternative names never coincide with a topic name or adjective (a replaced forbidden
  word cannot bring another forbidden word back);
* the end phrases, postscripts and titles contain no commas (``punctuation:no_comma`` removes them
  everywhere else, and removing one from an end phrase would break ``startend:end_checker``).
"""

from __future__ import annotations

from typing import NamedTuple


class Topic(NamedTuple):
    name: str  # the noun the prompt names ("river")
    alt: str  # its replacement when the name is a forbidden word ("stream")
    adjs: tuple[str, str]  # two adjectives every answer's first sentence uses
    things: tuple[str, str, str]  # plural nouns seen there
    acts: tuple[str, str]  # intransitive verbs people do there


TOPICS: tuple[Topic, ...] = (
    Topic("river", "stream", ("calm", "cold"), ("fish", "stones", "boats"), ("swim", "row")),
    Topic("garden", "yard", ("green", "quiet"), ("flowers", "bees", "trees"), ("plant", "relax")),
    Topic("market", "bazaar", ("busy", "loud"), ("fruit", "bread", "spices"), ("shop", "bargain")),
    Topic("library", "archive", ("quiet", "old"), ("books", "maps", "desks"), ("read", "study")),
    Topic("forest", "woods", ("dark", "deep"), ("pines", "deer", "mushrooms"), ("hike", "camp")),
    Topic("beach", "shore", ("sunny", "wide"), ("shells", "waves", "sand"), ("swim", "surf")),
    Topic("mountain", "peak", ("tall", "steep"), ("rocks", "snow", "goats"), ("climb", "ski")),
    Topic("village", "hamlet", ("small", "friendly"), ("houses", "farms", "lanes"), ("walk", "chat")),
    Topic("bakery", "bakehouse", ("warm", "cozy"), ("bread", "cakes", "cookies"), ("bake", "eat")),
    Topic("museum", "gallery", ("grand", "bright"), ("paintings", "statues", "coins"), ("learn", "look")),
    Topic("park", "commons", ("open", "lively"), ("benches", "paths", "ducks"), ("play", "jog")),
    Topic("lake", "pond", ("still", "deep"), ("ducks", "reeds", "boats"), ("fish", "sail")),
    Topic("farm", "ranch", ("busy", "wide"), ("cows", "hens", "fields"), ("work", "ride")),
    Topic("castle", "fortress", ("old", "huge"), ("towers", "walls", "gates"), ("explore", "wander")),
    Topic("school", "academy", ("busy", "bright"), ("classes", "desks", "teachers"), ("learn", "play")),
    Topic("kitchen", "pantry", ("warm", "clean"), ("pots", "spices", "plates"), ("cook", "eat")),
    Topic("desert", "wasteland", ("hot", "dry"), ("sand", "camels", "dunes"), ("hike", "explore")),
    Topic("island", "isle", ("sunny", "remote"), ("palms", "birds", "beaches"), ("swim", "dive")),
    Topic("bridge", "viaduct", ("long", "strong"), ("cars", "cables", "lights"), ("walk", "cross")),
    Topic("station", "depot", ("busy", "loud"), ("trains", "tickets", "clocks"), ("wait", "travel")),
    Topic("zoo", "menagerie", ("fun", "lively"), ("lions", "monkeys", "bears"), ("watch", "learn")),
    Topic("theater", "playhouse", ("grand", "dark"), ("actors", "seats", "curtains"), ("watch", "laugh")),
    Topic("meadow", "pasture", ("wide", "green"), ("grass", "flowers", "butterflies"), ("rest", "picnic")),
    Topic("valley", "vale", ("green", "deep"), ("streams", "farms", "hills"), ("hike", "camp")),
    Topic("city", "metropolis", ("big", "busy"), ("streets", "towers", "shops"), ("shop", "travel")),
    Topic("stadium", "arena", ("loud", "huge"), ("fans", "seats", "lights"), ("cheer", "play")),
    Topic("temple", "shrine", ("quiet", "ancient"), ("bells", "statues", "gardens"), ("pray", "rest")),
    Topic("orchard", "grove", ("sweet", "green"), ("apples", "pears", "trees"), ("pick", "walk")),
    Topic("cave", "cavern", ("dark", "cool"), ("bats", "rocks", "crystals"), ("explore", "climb")),
    Topic("port", "dock", ("busy", "windy"), ("ships", "nets", "gulls"), ("sail", "fish")),
    Topic("airport", "airfield", ("busy", "large"), ("planes", "gates", "bags"), ("fly", "travel")),
    Topic("diner", "eatery", ("cozy", "warm"), ("coffee", "tea", "pies"), ("eat", "talk")),
    Topic("festival", "fair", ("bright", "loud"), ("music", "games", "food"), ("dance", "sing")),
)

# Replacement of an adjective when it is a forbidden word (single words, never an adjective above).
SYNONYMS: dict[str, str] = {
    "calm": "peaceful", "cold": "chilly", "green": "leafy", "quiet": "silent", "busy": "crowded",
    "loud": "noisy", "old": "aged", "dark": "shadowy", "deep": "vast", "sunny": "sunlit",
    "wide": "broad", "tall": "lofty", "steep": "sheer", "small": "tiny", "friendly": "kind",
    "warm": "toasty", "cozy": "snug", "grand": "stately", "bright": "radiant", "open": "airy",
    "lively": "cheerful", "still": "tranquil", "huge": "massive", "clean": "tidy", "hot": "scorching",
    "dry": "arid", "remote": "secluded", "long": "lengthy", "strong": "sturdy", "fun": "joyful",
    "big": "vast", "ancient": "antique", "sweet": "fragrant", "cool": "breezy", "windy": "gusty",
    "large": "spacious",
}

TIMES: tuple[str, ...] = ("morning", "evening", "summer", "winter", "spring", "autumn")

# Words for keywords:existence: never written unless a prompt asks for them.
KEYWORDS: tuple[str, ...] = (
    "lantern", "compass", "velvet", "melody", "puzzle", "ribbon", "anchor", "feather", "marble",
    "pepper", "violin", "tiger", "rocket", "pillow", "basket", "blanket", "mirror", "zebra", "kettle",
    "orbit", "jacket", "lemon", "magnet", "pirate", "wizard", "tunnel", "spider", "trumpet", "honey",
    "penguin", "dragon", "saddle",
)

END_PHRASES: tuple[str, ...] = (
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "Any other questions?",
    "That is all I have to say.",
    "Have a nice day.",
)

TASKS: tuple[str, ...] = (
    "Write a short note about the {name}.",
    "Describe the {name} in a few sentences.",
    "Tell me about the {name}.",
    "Write a few sentences about a visit to the {name}.",
)

# IFEval's own phrasings (from its prompts and instruction descriptions), two per instruction id.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "change_case:english_lowercase": (
        "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
        "Please ensure that your response is in English, and in all lowercase letters. No capital letters are allowed.",
    ),
    "change_case:english_capital": (
        "Your entire response should be in English, and in all capital letters.",
        "Make sure your entire response is in English, and in all capital letters.",
    ),
    "keywords:existence": (
        "Include keywords {keywords} in the response.",
        "Make sure to include the words {keywords} in your response.",
    ),
    "keywords:forbidden_words": (
        "Do not include keywords {forbidden_words} in the response.",
        "Do not include the following keywords: {forbidden_words}.",
    ),
    "punctuation:no_comma": (
        "In your entire response, refrain from the use of any commas.",
        "Do not use any commas in your response.",
    ),
    "startend:end_checker": (
        'Finish your response with this exact phrase "{end_phrase}". No other words should follow this phrase.',
        'End your response with the exact phrase "{end_phrase}".',
    ),
    "detectable_content:postscript": (
        "At the end of your response, please explicitly add a postscript starting with P.S.",
        "Make sure to include a postscript starting with P.S. at the end of your response.",
    ),
    "length_constraints:number_words": (
        "Answer with {relation} {num_words} words.",
        "Your response should contain {relation} {num_words} words.",
    ),
    "startend:quotation": (
        "Wrap your entire response with double quotation marks.",
        "Put double quotation marks around your whole response.",
    ),
    "detectable_format:title": (
        "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
        "Your response must contain a title wrapped in double angular brackets, i.e. <<title>>.",
    ),
}


class Style(NamedTuple):
    """One answer style: sentence templates with {name} {Name} {adj1} {adj2} {th1..3} {act1..2} {time} {kws}.

    ``first`` is always the first body sentence and names the topic and both adjectives (so a
    forbidden topic word is present unless replaced) and holds a comma (so ``punctuation:no_comma``
    is violated unless the commas are removed). ``opening``/``closing`` are optional fixed sentences.
    """

    opening: str
    first: str
    body: tuple[str, ...]
    closing: str
    fillers: tuple[str, ...]  # extra sentences for padding to a word count
    n_body: tuple[int, int]  # how many body sentences besides the first (inclusive range)
    title: str
    keywords: str
    postscript: str


# The ground truth (and the warm-up student): plain, short, one sentence family.
PLAIN = Style(
    opening="",
    first="In the {time}, the {name} is {adj1} and {adj2}.",
    body=(
        "People come here to {act1} and {act2}.",
        "You can see {th1} and {th2} near the {name}.",
        "I like to {act1} there with my friends.",
        "The {th3} make it a nice place to visit.",
        "It is a good spot for a walk, a talk, or a rest.",
        "Many people spend the whole day here.",
    ),
    closing="",
    fillers=(
        "It is a place I will always remember.",
        "I think everyone should see it once.",
        "I want to go back there soon.",
        "My family likes it very much.",
    ),
    n_body=(1, 3),
    title="<<The {Name}>>",
    keywords="It reminds me of {kws}.",
    postscript="P.S. I hope you visit the {name} soon.",
)

# The teacher: a large model's style - a fixed polite opening, longer sentences, a summary closing.
TEACHER = Style(
    opening="Certainly, here is a short note about the {name}.",
    first="The {name} is a truly {adj1} place, and it often feels {adj2}.",
    body=(
        "Visitors often {act1} here during the {time}.",
        "Along the way, one may notice {th1}, {th2}, and {th3}.",
        "Many locals enjoy the chance to {act2} at the {name}.",
        "It offers a peaceful escape from the noise of daily life.",
        "Each season brings a new reason to return.",
    ),
    closing="Overall, the {name} is a wonderful place to {act1}.",
    fillers=(
        "Indeed, it is a place worth remembering.",
        "Many people return here year after year.",
        "In short, it rewards every visitor.",
        "Truly, there is always something new to discover.",
    ),
    n_body=(1, 2),
    title="<<A Note About the {Name}>>",
    keywords="I would also like to mention {kws}.",
    postscript="P.S. Thank you for reading about the {name}.",
)
