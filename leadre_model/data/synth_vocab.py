"""Word lists and the category taxonomy of the synthetic world (data, not logic)."""

from __future__ import annotations

# One block per first-level category: "L1 | main product type | adjectives", then its
# second-level categories as "L2: product nouns" (names are unique across the taxonomy).
_TAXONOMY_TEXT = """
Electronics | e-commerce | smart, wireless, compact, ultra-thin, pro, fast-charging
  Smartphones: smartphone, 5G phone, flip phone; Laptops: laptop, ultrabook, gaming laptop
  Audio: headphones, earbuds, soundbar; Wearables: smartwatch, fitness band, smart ring
  Cameras: mirrorless camera, action camera, drone
  Phone Accessories: power bank, phone case, charger
Automobile | lead form | new, hybrid, spacious, sporty, family, turbo
  Sedans: sedan, family sedan, hybrid sedan; SUVs: SUV, compact SUV, 7-seat SUV
  Electric Vehicles: electric car, EV hatchback, plug-in hybrid
  Car Care: car wax, dash cam, tire set; Car Rental: rental car, chauffeur service, camper van
  Motorcycles: scooter, motorcycle, e-bike
Education | lead form | online, intensive, certified, personalised, weekend, live
  K-12 Tutoring: math tutoring, reading course, science camp
  Language Learning: English course, Spanish class, IELTS prep
  Test Prep: SAT prep, exam bootcamp, mock test pack
  Vocational Training: coding bootcamp, design course, accounting course
  Online Degrees: online MBA, bachelor program, data science certificate
  Early Education: toddler class, phonics program, STEM kit
Finance | lead form | low-rate, flexible, secure, instant, no-fee, premium
  Credit Cards: credit card, cashback card, travel card; Loans: personal loan, car loan, mortgage
  Insurance: life insurance, health insurance, car insurance
  Investing: brokerage account, index fund, robo advisor
  Banking: savings account, checking account, digital bank
  Payments: payment app, money transfer, e-wallet
Games | game | epic, free-to-play, multiplayer, retro, relaxing, competitive
  Mobile RPG: fantasy RPG, idle RPG, gacha game; Casual Games: puzzle game, match-3 game, word game
  Strategy Games: strategy game, tower defense, city builder
  Shooter Games: battle royale, FPS game, tactical shooter
  Sports Games: football game, racing game, basketball game
  Card Games: card battler, poker game, mahjong game
Beauty | e-commerce | hydrating, organic, long-lasting, gentle, radiant, matte
  Skincare: moisturizer, serum, sunscreen; Makeup: lipstick, foundation, eyeshadow palette
  Hair Care: shampoo, hair dryer, hair oil; Fragrance: perfume, body mist, cologne
  Men's Grooming: beard trimmer, razor, face wash; Nail Care: nail polish, gel kit, nail lamp
Apparel | e-commerce | classic, slim-fit, oversized, breathable, vintage, waterproof
  Womenswear: dress, blouse, trench coat; Menswear: suit, polo shirt, chinos
  Footwear: sneakers, boots, sandals; Sportswear: running tights, track jacket, yoga pants
  Bags: backpack, handbag, tote bag; Jewelry: necklace, wristwatch, earrings
Home & Living | e-commerce | cozy, modern, space-saving, quiet, energy-saving, handmade
  Furniture: sofa, dining table, bed frame; Kitchen: air fryer, blender, cookware set
  Home Appliances: robot vacuum, washing machine, air purifier; Bedding: mattress, duvet, pillow set
  Home Decor: floor lamp, rug, wall art; Smart Home: smart speaker, video doorbell, smart plug
Food & Beverage | e-commerce | fresh, organic, spicy, low-sugar, artisan, family-size
  Snacks: snack box, protein bar, mixed nuts; Beverages: coffee beans, green tea, energy drink
  Meal Kits: meal kit, ready meal, salad box; Fresh Produce: fruit box, organic vegetables, seafood
  Food Delivery: pizza delivery, burger combo, noodle bowl
  Wine & Spirits: red wine, craft beer, whisky
Travel | app download | all-inclusive, last-minute, luxury, budget, scenic, weekend
  Flights: flight deal, round-trip ticket, business class seat
  Hotels: hotel stay, beach resort, boutique hotel
  Vacation Packages: island package, cruise, ski trip
  Trains: train ticket, rail pass, sleeper berth
  Travel Gear: carry-on luggage, travel pillow, packing cubes
  Travel Apps: trip planner app, map app, translation app
Health | lead form | natural, clinically-tested, daily, personalised, gentle, advanced
  Supplements: multivitamin, fish oil, probiotic; Fitness: gym membership, treadmill, dumbbell set
  Medical Services: health checkup, dental cleaning, eye exam
  Mental Health: therapy session, meditation app, sleep program
  Weight Loss: meal plan, diet coaching, calorie tracker
  Pharmacy: cold medicine, allergy relief, pain reliever
Real Estate | lead form | downtown, new, spacious, affordable, furnished, riverside
  New Homes: apartment, townhouse, villa; Rentals: studio rental, shared flat, serviced apartment
  Home Renovation: kitchen remodel, bathroom remodel, flooring
  Property Services: property manager, home inspection, moving service
  Commercial Property: office space, retail shop, co-working desk
  Interior Design: interior design, custom cabinet, wallpaper
Mother & Baby | e-commerce | soft, safe, organic, lightweight, hypoallergenic, foldable
  Baby Formula: infant formula, toddler milk, organic formula
  Diapers: diapers, baby wipes, training pants; Strollers: stroller, car seat, baby carrier
  Toys: building blocks, plush toy, puzzle set
  Maternity: maternity dress, nursing pillow, pregnancy vitamins
  Kids Clothing: kids jacket, school uniform, kids shoes
Sports & Outdoors | e-commerce | lightweight, durable, all-weather, pro, carbon, portable
  Running: running shoes, GPS watch, hydration vest; Cycling: road bike, bike helmet, cycling jersey
  Camping: tent, sleeping bag, camping stove; Fishing: fishing rod, fishing reel, tackle box
  Ball Sports: basketball, soccer ball, tennis racket; Water Sports: surfboard, kayak, swim goggles
Entertainment | app download | exclusive, ad-free, live, unlimited, family, premium
  Streaming Video: streaming plan, movie pass, documentary channel
  Music: music app, concert ticket, vinyl record; Short Video: short video app, creator tool, vlog
  Books & Comics: e-reader, comic app, audiobook; Events: theater ticket, comedy show, festival pass
  Social Apps: dating app, social app, community app
Local Services | local service | nearby, same-day, top-rated, affordable, 24-hour, certified
  Restaurants: hot pot restaurant, steakhouse, sushi bar
  Home Services: house cleaning, plumber, pest control
  Beauty Salons: hair salon, nail salon, spa massage; Auto Repair: car wash, oil change, tire repair
  Pet Care: pet grooming, pet hotel, vet clinic
  Weddings: wedding photography, wedding venue, bridal gown
"""


def _parse_taxonomy(text: str) -> list[tuple[str, str, list[str], list[tuple[str, list[str]]]]]:
    out: list[tuple[str, str, list[str], list[tuple[str, list[str]]]]] = []
    for line in text.strip("\n").splitlines():
        if not line.startswith(" "):
            l1, ptype, adjectives = line.split(" | ")
            out.append((l1, ptype, adjectives.split(", "), []))
            continue
        for part in line.strip().split("; "):
            name, nouns = part.split(": ")
            out[-1][3].append((name, nouns.split(", ")))
    return out


TAXONOMY = _parse_taxonomy(_TAXONOMY_TEXT)
PRODUCT_TYPES = ("e-commerce", "app download", "game", "local service", "lead form",
                 "brand awareness", "mini program")
PRICE_BANDS = ("budget", "mid-range", "premium", "luxury")
CONSUMPTION_LEVELS = ("low", "medium", "high", "very high")  # index-aligned with PRICE_BANDS
AUDIENCES = ("students", "young professionals", "parents", "seniors", "families", "enthusiasts")
PROMOS = ("free shipping", "20% off", "free trial", "limited offer", "bundle deal", "new arrival")
GENDERS = ("male", "female", None)
EDUCATION = ("high school", "associate", "bachelor's", "master's", "doctorate")
OCCUPATIONS = ("student", "Internet industry", "finance", "education", "healthcare",
               "manufacturing", "retail", "government", "freelance", "retired")
RESIDENCES = ("Haidian, Beijing", "Chaoyang, Beijing", "Pudong, Shanghai", "Xuhui, Shanghai",
              "Tianhe, Guangzhou", "Nanshan, Shenzhen", "Futian, Shenzhen", "Xihu, Hangzhou",
              "Wuhou, Chengdu", "Jiangbei, Chongqing", "Wuchang, Wuhan", "Yanta, Xi'an",
              "Gulou, Nanjing", "Shinan, Qingdao", "Lixia, Jinan", "Siming, Xiamen")
# Occupations that plausibly lift a category on top of the random world-level affinities.
OCC_BOOST = {"student": ("Education", "Games"), "retired": ("Health", "Travel"),
             "Internet industry": ("Electronics",), "finance": ("Finance", "Automobile")}
BRAND = (("Nor", "Vel", "Ka", "Lu", "Zen", "Ori", "Sol", "Bri", "Mar", "Tek", "Ava", "Pio"),
         ("vik", "ra", "no", "mo", "tix", "sa", "lo", "ven", "ta", "rix", "via", "dor"),
         ("", "", "", "a", "o", "ex", "is", "on"))
VIDEO_TITLES = ("Unboxing: {adj} {noun}", "{noun} review - worth it?", "Top picks: {adj} {noun}",
                "Living with the {noun} for a week", "{noun} vs the competition",
                "Hands-on: {adj} {noun}")
ARTICLE_TITLES = ("Buying guide: {adj} {noun}", "7 things to know before buying the {noun}",
                  "Why the {noun} is trending", "How to choose the right {noun}",
                  "The {adj} {noun}, explained", "{noun}: expert tips")
